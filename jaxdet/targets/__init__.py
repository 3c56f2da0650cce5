"""Training targets, per image on fixed shapes (vmap over a batch).

  anchor_targets     RPN labels {1, 0, -1} and deltas, sampled (Ren et al. 2015, sec. 3.1.2)
  proposal_targets   sampled RoIs with class labels and normalised deltas (Girshick 2015, sec. 2.3)
"""

from jaxdet.targets.anchor_targets import AnchorTargets, anchor_targets, label_anchors
from jaxdet.targets.proposal_targets import ProposalTargets, proposal_targets
