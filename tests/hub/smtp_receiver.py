"""A real SMTP server on 127.0.0.1 for the e-mail notification tests (aiosmtpd, in a thread
of the test process): records every message it accepts; refuses the recipients it is told
to with 550; with a TLS context it offers STARTTLS."""

from __future__ import annotations

import email
import email.policy
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller

from tests.fixtures.dbservers import free_port


@dataclass
class Mailbox:
    host: str = "127.0.0.1"
    port: int = 0
    messages: list[tuple[str, list[str], EmailMessage]] = field(default_factory=list)
    refuse: set[str] = field(default_factory=set)  # recipients answered with 550
    tls_sessions: int = 0  # messages that arrived over STARTTLS
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wait_count(self) -> int:
        with self.lock:
            return len(self.messages)


class _Handler:
    def __init__(self, box: Mailbox) -> None:
        self.box = box

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        if address in self.box.refuse:
            return "550 5.1.1 no such mailbox here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        with self.box.lock:
            self.box.messages.append((envelope.mail_from, list(envelope.rcpt_tos), message))
            if session.ssl is not None:
                self.box.tls_sessions += 1
        return "250 Message accepted"


@contextmanager
def mailbox(tls: ssl.SSLContext | None = None) -> Iterator[Mailbox]:
    box = Mailbox(port=free_port())
    kwargs: dict[str, Any] = {}
    if tls is not None:
        kwargs.update(tls_context=tls, require_starttls=True)
    controller = Controller(_Handler(box), hostname=box.host, port=box.port,
                            ready_timeout=10.0, **kwargs)
    controller.start()
    try:
        yield box
    finally:
        controller.stop()
