"""A real hub for tests that run ``tiangong hub …`` processes: initialised by the CLI (on
SQLite or a PostgreSQL database), seeded through the services (users, an environment,
agents enrolled with generated keys, an approved release queued for every agent)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from hub.config import load_config
from hub.db import make_engine, make_session_factory
from hub.keystore import load_hub_keys
from hub.services.agents import EnrollmentRequest, enroll_agent
from hub.services.approvals import approve_release
from hub.services.context import HubKeys, ServiceContext, utc_now
from hub.services.deployments import queue_deployment
from hub.services.environments import create_environment
from hub.services.releases import create_release, submit_release
from hub.services.users import create_user, get_user, grant_role
from signing.keys import BoxKeyPair, SigningKey
from tests.e2e.conftest import TIANGONG

HELLO = Path(__file__).resolve().parents[2] / "examples" / "releases" / "hello-1.0.0"
ENV = "plant-a"


@dataclass
class RealHub:
    data: Path
    database_url: str | None = None
    engine: Engine | None = None
    keys: HubKeys | None = None
    agents: dict[str, SigningKey] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "TIANGONG_HUB_DATA_DIR": str(self.data)}

    def cli(
        self, *args: str, user: str = "op", extra_env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*TIANGONG, "hub", "--local-admin", user, *args],
            capture_output=True,
            text=True,
            timeout=300,
            env={**self.env, **(extra_env or {})},
            check=False,
        )

    def popen(self, *args: str, user: str = "op") -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*TIANGONG, "hub", "--local-admin", user, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
        )

    def init(self) -> None:
        args = ["init", "--admin", "admin", "--hub-id", "hub-test", "--insecure-no-passphrase"]
        if self.database_url:
            args += ["--database-url", self.database_url]
        out = self.cli(*args, user="admin")
        assert out.returncode == 0, out.stderr
        self.init_engine()

    def init_engine(self) -> None:
        """(Re)load the keys and open the hub's database, as its processes do."""
        cfg = load_config(self.data)
        self.keys = load_hub_keys(self.data)
        self.engine = make_engine(cfg.database_url, audit_mac=self.keys.audit_mac)

    @contextmanager
    def ctx(self, user: str | None = "admin") -> Iterator[ServiceContext]:
        assert self.engine is not None
        session: Session = make_session_factory(self.engine)()
        try:
            actor = get_user(session, user) if user else None
            yield ServiceContext(session, utc_now, actor, self.keys, self.data / "releases")
            session.commit()
        finally:
            session.close()

    def seed(self, agents: int) -> None:
        """Users op/dev/appr/aud, environment plant-a, ``agents`` enrolled agents
        (``site-01`` …), hello 1.0.0 approved and queued for each of them."""
        self.seed_people()
        self.enroll(agents)
        self.queue()

    def seed_people(self) -> None:
        """Users op/dev/appr/aud and environment plant-a."""
        with self.ctx() as admin:
            create_environment(admin, ENV)
            for name, role in (("op", "operator"), ("dev", "developer"), ("appr", "approver"),
                               ("aud", "auditor")):
                create_user(admin, name)
                grant_role(admin, name, role)

    def enroll(self, agents: int) -> None:
        """``agents`` agents enrolled with generated keys (``site-01`` …)."""
        with self.ctx("op") as op:
            for i in range(1, agents + 1):
                key = SigningKey.generate()
                agent_id = f"site-{i:02d}"
                self.agents[agent_id] = key
                enroll_agent(op, ENV, EnrollmentRequest(
                    hostname=agent_id, ed25519_public=key.public.raw.hex(),
                    x25519_public=BoxKeyPair.generate().public.raw.hex(), agent_id=agent_id))

    def queue(self) -> None:
        """hello 1.0.0 approved and queued for every enrolled agent of plant-a."""
        with self.ctx("dev") as dev:
            release = create_release(dev, HELLO, create_missing_product=True)
            submit_release(dev, release)
            release_id = release.id
        with self.ctx("appr") as appr:
            from hub.db import Release

            approve_release(appr, appr.session.get(Release, release_id))
        with self.ctx("op") as op:
            from hub.db import Release

            queue_deployment(op, op.session.get(Release, release_id), ENV)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.dispose()
