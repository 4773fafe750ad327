"""FullNet + varCE (Qu et al., MICCAI 2019): full-resolution dense network, ternary labels,
weight maps and the variance-constrained cross entropy.

Modules: ``net`` (FullNet), ``targets`` (ternary labels, varCE instance ids, target builder),
``weights`` (weight maps), ``loss`` (weighted CE + varCE), ``postproc`` (instances from
probabilities), ``family`` (:class:`FullNetFamily`, registered as ``fullnet``).
"""
