"""Training targets and the proposal layer, per image on fixed shapes (vmap over a batch).

  anchor_targets     RPN labels {1, 0, -1} and deltas, sampled (seed 001)
  propose            the proposal layer: decode, clip, size filter, top-k, NMS
  proposal_targets   sampled RoIs with class labels and normalised deltas (seeds 001, 003)
"""

from jaxdet.targets.anchor_targets import AnchorTargets, anchor_targets, label_anchors
from jaxdet.targets.proposal_targets import ProposalTargets, proposal_targets
from jaxdet.targets.proposals import Proposals, propose
