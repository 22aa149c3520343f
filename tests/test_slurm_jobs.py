"""What a SLURM job is asked for and what each of its tasks is told, for shapes a one-node cluster
cannot run (several nodes, GPUs): the job's parameters, and the rendezvous a task derives from
SLURM's variables (harness/slurm.py). The jobs themselves run in tests/test_slurm.py."""
import pytest

from afdcd_bench.harness.plan import PlannedRun, Resources
from afdcd_bench.harness.slurm import SlurmRun, job_parameters


def test_a_two_node_run_asks_for_one_task_per_gpu_on_each_node_after_what_it_needs():
    run = PlannedRun("cityscapes/deeplabv3_resnet18/afdcd", 1, [], ["cityscapes/teacher@seed0"],
                     Resources(processes=4, gpus=4, nodes=2, threads=8))
    params = job_parameters(run, ["101", "102"], {"time": 180, "partition": "gpu", "mem_gb": 64, "signal_delay_s": 300})
    assert (params["nodes"], params["ntasks_per_node"], params["gpus_per_node"], params["cpus_per_task"]) == (2, 4, 4, 8)
    assert params["additional_parameters"] == {"requeue": True, "dependency": "afterok:101:102"}
    assert (params["time"], params["partition"], params["mem"], params["signal_delay_s"]) == (180, "gpu", "64GB", 300)
    assert params["setup"] == ["export OMP_NUM_THREADS=8"]
    cpu = job_parameters(PlannedRun("demo/kd", 0, [], [], Resources()), [], {})
    assert "gpus_per_node" not in cpu and "dependency" not in cpu["additional_parameters"] and cpu["nodes"] == 1


def test_submitit_takes_the_parameters_of_a_two_node_job(tmp_path):
    """submitit checks each parameter's name and type when it is given them (no cluster needed): the
    two-node job's, and a CPU job's, are taken as they are."""
    import submitit

    two_nodes = job_parameters(PlannedRun("cityscapes/deeplabv3_resnet18/afdcd", 1, [], ["cityscapes/teacher@seed0"],
                                          Resources(processes=4, gpus=4, nodes=2, threads=8)), ["101"],
                               {"time": 180, "partition": "gpu", "account": "acc", "qos": "high", "constraint": "h100",
                                "mem_gb": 64, "signal_delay_s": 300})
    cpu = job_parameters(PlannedRun("demo/kd", 0, [], [], Resources(threads=2)), [], {})
    for params in (two_nodes, cpu):
        ex = submitit.SlurmExecutor(folder=str(tmp_path / "%j"))
        ex.update_parameters(**params)
        assert {k: ex.parameters[k] for k in params} == params
    with pytest.raises(Exception, match="nodez"):  # and refuses a name it does not know, so the check above means something
        submitit.SlurmExecutor(folder=str(tmp_path / "%j")).update_parameters(nodez=2)


@pytest.mark.parametrize("gpus", [True, False])
def test_the_last_task_of_a_two_node_job_gets_its_global_and_local_rank_and_the_first_node_as_master(monkeypatch, gpus):
    env = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "4321", "SLURM_NTASKS": "4", "SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": "1",
           "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_PROCID": "3", "SLURM_LOCALID": "1"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    if gpus:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    else:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    got = SlurmRun(["train", "demo/kd"], {}).rendezvous()
    assert {k: got[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")} == {
        "RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "gpu07", "MASTER_PORT": "24321"}
    assert ("ACCELERATE_USE_CPU" in got) is (not gpus)  # CPU tasks synchronise over gloo
