"""The training engine: run assembly, data, optimisation, the loop, validation, records,
checkpoints, time budgets and multi-process helpers. A family (``models.base.Family``)
supplies the network, targets, loss and post-processing; nothing here branches on its name."""
