"""The CPU-thread policy (:mod:`tesla.domain.threads`) and the process set-up before torch
starts (:mod:`tesla.app.threads`)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tesla.app.threads import prepare_process, usable_cpus
from tesla.domain.errors import ConfigError
from tesla.domain.threads import MAX_DEFAULT_THREADS, default_threads, process_environment, threads_for


def test_the_default_is_the_usable_cpus_capped():
    assert default_threads({}, 2) == 2
    assert default_threads({}, 1) == 1
    assert default_threads({}, 64) == MAX_DEFAULT_THREADS
    assert default_threads({}, 0) == 1


def test_a_thread_count_the_user_set_wins_tesla_threads_first():
    assert default_threads({"OMP_NUM_THREADS": "3"}, 2) == 3
    assert default_threads({"TESLA_THREADS": "5", "OMP_NUM_THREADS": "3"}, 2) == 5
    assert default_threads({"TESLA_THREADS": " ", "OMP_NUM_THREADS": "3"}, 2) == 3
    with pytest.raises(ConfigError, match="TESLA_THREADS='many' is not a thread count"):
        default_threads({"TESLA_THREADS": "many"}, 2)
    with pytest.raises(ConfigError, match="OMP_NUM_THREADS='0'"):
        default_threads({"OMP_NUM_THREADS": "0"}, 2)


def test_ranks_on_one_host_share_its_cpus():
    assert default_threads({"LOCAL_WORLD_SIZE": "4"}, 8) == 2
    assert default_threads({"LOCAL_WORLD_SIZE": "4"}, 2) == 1


def test_threads_option():
    assert threads_for(3, {"TESLA_THREADS": "5"}, 2) == 3  # --threads beats the environment
    assert threads_for(None, {}, 2) == 2
    for bad in (0, -1, True):
        with pytest.raises(ConfigError, match="--threads must be an integer >= 1"):
            threads_for(bad, {}, 2)


def test_the_process_environment_sets_the_wait_policy_and_count_unless_the_user_did():
    assert process_environment({}, 2) == {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "2"}
    assert process_environment({"TESLA_THREADS": "1"}, 2) == {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}
    assert process_environment({"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "4"}, 2) == {}


def test_usable_cpus_follow_the_affinity_and_a_container_quota(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    assert usable_cpus(tmp_path / "absent") == affinity
    quota = tmp_path / "cpu.max"
    quota.write_text("max 100000\n")
    assert usable_cpus(quota) == affinity
    quota.write_text("50000 100000\n")  # half a CPU: one thread
    assert usable_cpus(quota) == 1
    quota.write_text("garbage\n")
    assert usable_cpus(quota) == affinity


def test_prepare_process_fills_in_what_is_unset():
    env = {"OMP_NUM_THREADS": "1"}
    assert prepare_process(env) == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert env == {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}


def test_the_command_line_entry_sets_them_before_torch_is_imported():
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "TESLA_THREADS")}
    code = ("import sys, os; import tesla.app.cli.main; "
            "print(os.environ['OMP_WAIT_POLICY'], os.environ['OMP_NUM_THREADS'], 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["PASSIVE", str(min(usable_cpus(), MAX_DEFAULT_THREADS)), "False"]
