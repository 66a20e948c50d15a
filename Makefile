# The two commands a newcomer needs are `make up` and `make test` (see README.md).
.PHONY: up down status test lint bench install services

up:        ## start selfheal locally (Airflow standalone + services) and print the UI URL and credentials
	scripts/airflow-local.sh up
down:      ## stop what `make up` started
	scripts/airflow-local.sh down
status:
	scripts/airflow-local.sh status
test:      ## install what is missing, start the real services, run ruff and pytest, stop what it started
	scripts/test.sh $(PYTEST_ARGS)
install:
	scripts/bootstrap.sh
lint:
	.venv/bin/ruff check .
bench:     ## make bench NAME=dag_parse
	.venv/bin/python -m bench $(NAME)
