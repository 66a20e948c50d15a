# The two commands a newcomer needs are `make up` and `make test` (see README.md).
.PHONY: up down status demo test lint bench install services

up:        ## start selfheal locally (Airflow standalone, services, demo stack), print the UI URL and login, run the demo
	scripts/airflow-local.sh up
down:      ## stop what `make up` started
	scripts/airflow-local.sh down
status:
	scripts/airflow-local.sh status
demo:      ## run the self-healing demo again on a running `make up` (SELFHEAL_DEMO=0 make up skips it)
	scripts/airflow-local.sh demo
test:      ## install what is missing, start the real services, run ruff and pytest, stop what it started
	scripts/test.sh $(PYTEST_ARGS)
install:
	scripts/bootstrap.sh
lint:
	.venv/bin/ruff check .
bench:     ## make bench NAME=dag_parse
	.venv/bin/python -m bench $(NAME)
