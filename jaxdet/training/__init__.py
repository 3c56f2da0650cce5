"""Training: the train state, the optimizer, the jit-compiled step, the loop, checkpoints, the
data-parallel step. Building the model and its pretrained weights are `jaxdet.models`'
(`build_model`, `load_pretrained`, ...), exported here too for a training script's convenience."""

from jaxdet.checkpoint_format import checkpoint_manager
from jaxdet.models.build import build_model, init_variables
from jaxdet.models.weights import WeightsError, convert_vgg16, load_pretrained, load_state_dict, vgg16_state_dict
from jaxdet.settings import DetectorSettings, OptimizerSettings
from jaxdet.training.checkpoints import restore_checkpoint, save_checkpoint
from jaxdet.training.optimizer import learning_rate_schedule, make_optimizer
from jaxdet.training.state import TrainState, create_train_state
from jaxdet.training.step import detection_losses, eval_step, step_key, train_step
