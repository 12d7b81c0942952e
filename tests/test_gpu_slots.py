"""`runtime.judges_per_gpu`: model judges take one of a GPU's slots (file locks) before loading,
so that cells side by side on one GPU do not run it out of memory. Real processes, real locks."""

from __future__ import annotations

import multiprocessing
import time

import pytest

from safetydrift import gpu_slots
from safetydrift.params import ParamError


def _hold_then_exit(gpu, lock_dir, slots, held_for, started):
    gpu_slots.hold_slot(gpu, slots, lock_dir)
    started.set()
    time.sleep(held_for)
    # Exiting releases the lock: the operating system closes the file.


def test_a_full_gpu_makes_the_next_judge_wait_until_a_holder_exits(tmp_path):
    context = multiprocessing.get_context("spawn")
    started = context.Event()
    holder = context.Process(target=_hold_then_exit, args=("GPU-one", tmp_path, 1, 2.0, started))
    holder.start()
    assert started.wait(60)
    begun = time.monotonic()
    assert gpu_slots.hold_slot("GPU-one", 1, tmp_path) == 0
    waited = time.monotonic() - begun
    holder.join()
    assert holder.exitcode == 0
    assert waited >= 1.0, "the slot was taken while its holder still ran"
    # Held for the rest of this process: asking again returns the same slot at once.
    assert gpu_slots.hold_slot("GPU-one", 1, tmp_path) == 0


def test_two_slots_let_a_second_judge_in_and_other_gpus_are_apart(tmp_path):
    context = multiprocessing.get_context("spawn")
    started = context.Event()
    holder = context.Process(target=_hold_then_exit, args=("GPU-two", tmp_path, 2, 30.0, started))
    holder.start()
    try:
        assert started.wait(60)
        begun = time.monotonic()
        assert gpu_slots.hold_slot("GPU-two", 2, tmp_path) == 1  # slot 0 is the holder's
        assert gpu_slots.hold_slot("GPU-other", 1, tmp_path) == 0
        assert time.monotonic() - begun < 5
    finally:
        holder.terminate()
        holder.join()


def test_no_limit_and_no_gpu_take_no_slot(tmp_path):
    gpu_slots.set_judges_per_gpu(None)
    try:
        assert gpu_slots.hold_slot("GPU-free", lock_dir=tmp_path) is None
    finally:
        gpu_slots.set_judges_per_gpu(gpu_slots.DEFAULT_JUDGES_PER_GPU)
    assert gpu_slots.hold_judge_slot("cpu") is None
    assert not list(tmp_path.glob("GPU-free*"))


@pytest.mark.parametrize("value", [0, -1, 1.5, "two", True])
def test_the_setting_is_checked(value):
    with pytest.raises(ParamError, match=r"`runtime.judges_per_gpu` must be a whole number"):
        gpu_slots.set_judges_per_gpu(value)
