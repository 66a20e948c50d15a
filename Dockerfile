# The Airflow image with selfheal installed, for docker-compose.yaml on a
# workstation with Docker and internet. Pins come from requirements.txt + constraints.txt.
ARG AIRFLOW_IMAGE=apache/airflow:3.3.2-python3.11
FROM ${AIRFLOW_IMAGE}
USER root
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends haproxy git \
    && rm -rf /var/lib/apt/lists/*
USER airflow
COPY --chown=airflow:0 requirements.txt constraints.txt pyproject.toml README.md /opt/selfheal/
COPY --chown=airflow:0 plugins /opt/selfheal/plugins
RUN pip install --no-cache-dir -r /opt/selfheal/requirements.txt -c /opt/selfheal/constraints.txt \
    && pip install --no-cache-dir --no-deps -e /opt/selfheal
COPY --chown=airflow:0 dags /opt/airflow/dags
COPY --chown=airflow:0 include /opt/selfheal/include
ENV SELFHEAL_HOME=/opt/selfheal
