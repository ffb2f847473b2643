# bench/process-schedulers.Dockerfile: the shipped gateway configuration, with
# the schedulers as processes running the notebook environment (/opt/scheduler)
c = get_config()  # noqa: F821 (traitlets config file)
load_subconfig("/srv/gridhub/dask_gateway_config.py")  # noqa: F821
c.DiracClusterConfig.scheduler_cmd = [
    "/opt/scheduler/bin/python",
    *c.DiracClusterConfig.scheduler_cmd[1:],
]
