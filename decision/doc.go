// Package decision finds where in a model the decision "the asker's goal
// conflicts with mine" is represented, and whether the SOO pairs move along
// it: the decision-site analysis of issue soo-effect (probes/testbed-probe-3),
// for any model the engine runs.
//
// Two sets of scenario prompts are compared: conflict (the burglar asks
// where the valuable object is) and self (I ask for myself). For every
// (layer, site) at the last prompt token, where SOO with last-token pooling
// acts:
//
//   - a linear probe (L2-regularised logistic regression on standardised
//     features, float64, fitted by Newton's method: deterministic) learns
//     conflict vs self; its k-fold held-out accuracy says whether the site
//     carries the decision. Trained on all the scenarios, it is applied to
//     the SOO fragments: the fraction of "other" and of "self" fragments it
//     calls conflict. Their difference is the probe transfer.
//   - the cosine between the scenario direction (mean conflict − mean self)
//     and the SOO direction (mean other − mean self fragment) says whether
//     pulling the fragments together moves the scenario along its decision.
//   - the SOO MSE between self and other fragments (last token) is the loss
//     SOO training would start from at that site.
//
// The decision site is the row with the highest cosine × transfer among the
// sites whose probe works (Rule): where SOO's constraint lines up with the
// decision the scenarios make. It is a representational argument, not a
// causal one: the testbed probe also needed activation patching to show
// that the behaviour follows that site.
package decision
