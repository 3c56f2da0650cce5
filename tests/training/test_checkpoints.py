"""Checkpoints: exact resume, retention, the save interval, and a kill while saving."""

import os
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from jaxdet.training import checkpoint_manager, create_train_state, restore_checkpoint, save_checkpoint
from jaxdet.training.step import step_key, train_step
from helpers import REPO, load_config, small_state, synthetic_batch


@pytest.fixture(scope="module")
def config():
    return load_config()


def run(state, batches, start, count):
    """`count` steps from global step `start`; batch i is batches[i] (the data position is the step)."""
    losses = []
    for i in range(start, start + count):
        state, metrics = train_step(state, batches[i], step_key(state))
        losses.append(float(metrics["loss"]))
    return state, losses


def test_resume_continues_the_same_run(config, tmp_path):
    batches = [synthetic_batch(100 + i) for i in range(6)]
    straight, straight_losses = run(create_train_state(config, jax.random.PRNGKey(7)), batches, 0, 6)

    manager = checkpoint_manager(str(tmp_path / "ckpt"), save_every=3, keep=2)
    first, first_losses = run(create_train_state(config, jax.random.PRNGKey(7)), batches, 0, 3)
    assert save_checkpoint(manager, first, data_state={"position": 3, "epoch": 0})
    manager.close()

    # A new process would do this: a fresh state (another key, so nothing is shared by accident),
    # then the checkpoint's parameters, optimizer state, step, run key and data position.
    fresh = create_train_state(config, jax.random.PRNGKey(123))
    restored, data_state = restore_checkpoint(checkpoint_manager(str(tmp_path / "ckpt")), fresh)
    assert data_state == {"position": 3, "epoch": 0}
    assert int(restored.step) == 3
    np.testing.assert_array_equal(restored.rng, jax.random.split(jax.random.PRNGKey(7))[1])
    resumed, resumed_losses = run(restored, batches, data_state["position"], 3)

    np.testing.assert_allclose(first_losses + resumed_losses, straight_losses, rtol=1e-6)
    for a, b in zip(jax.tree.leaves((resumed.params, resumed.opt_state)),
                    jax.tree.leaves((straight.params, straight.opt_state))):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_interval_retention_and_forced_final_save(config, tmp_path):
    state = create_train_state(config, jax.random.PRNGKey(0))
    manager = checkpoint_manager(str(tmp_path / "ckpt"), save_every=2, keep=2, async_save=False)
    saved = []
    for step in range(1, 8):
        state = state.replace(step=jax.numpy.int32(step))
        saved.append(save_checkpoint(manager, state, data_state={"position": step}, force=step == 7))
    assert saved == [False, True, False, True, False, True, True]
    assert manager.all_steps() == [6, 7]
    _, data_state = restore_checkpoint(manager, state, step=6)
    assert data_state == {"position": 6}
    with pytest.raises(FileNotFoundError, match="no checkpoint for step 2"):
        restore_checkpoint(manager, state, step=2)
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        restore_checkpoint(checkpoint_manager(str(tmp_path / "empty")), state)


KILLED_WHILE_SAVING = textwrap.dedent("""
    import os, signal, sys, time
    sys.path.insert(0, {tests!r})
    from helpers import small_state
    from jaxdet.training import checkpoint_manager, save_checkpoint
    manager = checkpoint_manager({directory!r}, save_every=1, keep=5)
    save_checkpoint(manager, small_state(1), data_state={{"position": 1}})
    manager.wait_until_finished()
    # Step 2 carries 256 MB: its background write is far from done when the process dies, as
    # soon as the write has begun (its temporary directory exists).
    save_checkpoint(manager, small_state(2, ballast_mb=256), data_state={{"position": 2}})
    while not any(name.startswith("2.") for name in os.listdir({directory!r})):
        time.sleep(0.001)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_a_kill_while_saving_leaves_the_previous_checkpoint_intact(tmp_path):
    directory = str(tmp_path / "ckpt")
    script = KILLED_WHILE_SAVING.format(tests=os.path.join(REPO, "tests"), directory=directory)
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr
    # The process died with step 2 half written (orbax's temporary directory) ...
    assert sorted(os.listdir(directory))[0] == "1" and any(n.startswith("2.") for n in os.listdir(directory))
    # ... which the next manager ignores (and deletes in the background).
    manager = checkpoint_manager(directory)
    assert manager.all_steps() == [1]
    template = small_state(0)
    restored, data_state = restore_checkpoint(manager, template)
    assert int(restored.step) == 1 and data_state == {"position": 1}
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(small_state(1))):
        np.testing.assert_array_equal(a, b)
    # The half-written step 2 is not in the way of saving step 2 again.
    assert save_checkpoint(manager, small_state(2), force=True)
    manager.wait_until_finished()
    assert manager.all_steps() == [1, 2]
