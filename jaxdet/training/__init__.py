"""Training: the train state, the optimizer, the jit-compiled step, checkpoints, pretrained weights."""

from jaxdet.training.checkpoints import checkpoint_manager, restore_checkpoint, save_checkpoint
from jaxdet.settings import DetectorSettings, OptimizerSettings
from jaxdet.training.optimizer import learning_rate_schedule, make_optimizer
from jaxdet.training.state import TrainState, build_model, create_train_state, init_variables
from jaxdet.training.step import detection_losses, eval_step, step_key, train_step
from jaxdet.training.weights import WeightsError, convert_vgg16, load_pretrained, load_state_dict, vgg16_state_dict
