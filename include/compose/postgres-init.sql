-- The triage database and the pipeline's role, beside Airflow's metadata DB.
CREATE ROLE selfheal LOGIN PASSWORD 'selfheal';
CREATE DATABASE selfheal OWNER selfheal;
