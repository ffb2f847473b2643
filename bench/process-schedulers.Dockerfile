# bench/scheduler_isolation.py only: the gateway as before issue 15, its
# schedulers processes of its own running the notebook environment (then
# /opt/scheduler in the gateway image; now the notebook image's /opt/venv),
# so both layouts start the same scheduler (dashboard, preload, imports) and
# differ only in where it runs. Never for a deployment: user code on such a
# scheduler reads every secret the gateway holds.
#   docker build -f bench/process-schedulers.Dockerfile \
#     --build-arg GATEWAY=gridhub/gateway:x --build-arg NOTEBOOK=gridhub/notebook:x bench
ARG GATEWAY
ARG NOTEBOOK
FROM ${NOTEBOOK} AS notebook
FROM ${GATEWAY}
COPY --from=notebook /opt/venv /opt/scheduler
COPY process_schedulers_config.py /srv/gridhub/process_schedulers_config.py
CMD ["dask-gateway-server", "-f", "/srv/gridhub/process_schedulers_config.py"]
