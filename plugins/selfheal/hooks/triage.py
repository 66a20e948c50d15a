"""TriageDbHook: where the triage database is, from an Airflow connection.

Resolution order: the `selfheal_triage` connection (a Postgres connection,
so the password lives in Airflow's secrets backend), then what
`selfheal.triage.db.database_url` says (SELFHEAL_DATABASE_URL, else the
embedded SQLite file). The URL is never logged with its password.
"""

from __future__ import annotations

import sqlalchemy as sa
from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException


class TriageDbHook(BaseHook):
    conn_name_attr = "triage_conn_id"
    default_conn_name = "selfheal_triage"
    conn_type = "postgres"
    hook_name = "selfheal triage DB"

    def __init__(self, triage_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.triage_conn_id = triage_conn_id

    def get_url(self) -> str:
        try:
            conn = self.get_connection(self.triage_conn_id)
        except AirflowNotFoundException:
            conn = None
        if conn is not None and conn.host:
            return sa.engine.URL.create(
                "postgresql+psycopg",
                username=conn.login or None,
                password=conn.password or None,
                host=conn.host,
                port=conn.port or 5432,
                database=conn.schema or "selfheal",
            ).render_as_string(hide_password=False)
        from selfheal.triage.db import database_url

        return database_url()

    def get_engine(self) -> sa.Engine:
        from selfheal.triage.db import make_engine

        return make_engine(self.get_url())
