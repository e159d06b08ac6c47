"""A slow webhook receiver cannot stall other teams' deliveries (issue 13, item 4).

Real receivers on loopback: one answers `200` and then drips a byte a second, never ending
its headers (each read returns well inside any per-read timeout); one answers at once; one
answers after a second. The real reconciler pass sends what is due. Before the fix the
deliveries went one after another with a per-read timeout only, so the drip held every other
team's delivery for as long as it dripped, and the backoff was counted from the start of the
pass.
"""

from __future__ import annotations

import socket
import threading
import time
from datetime import timedelta

from sqlalchemy import select

from service.audits.reconciler import policy_from, reconcile_once
from service.db import make_engine, session_factory, utcnow
from service.migrate import upgrade
from service.outbound_webhooks.tables import WebhookDelivery, WebhookSubscription
from service.settings import Settings
from service.teams.repository import get_or_create_team
from tests.service.conftest import PEPPER, RecordingQueue
from tests.service.loopback import LoopbackServer, QuietHandler

DEADLINE_S = 2.0
DRIP_FOR_S = 12.0  # a drip connection is closed by the receiver after this long


class DripReceiver:
    """Accepts connections and answers each with a status line, then one byte a second."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/hook"
        self.connections = 0
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._drip, args=(connection,), daemon=True).start()

    def _drip(self, connection: socket.socket) -> None:
        with connection:
            connection.settimeout(5)
            try:
                connection.recv(65536)  # the request (its bytes are not checked here)
                connection.sendall(b"HTTP/1.1 200 OK\r\nX-Drip: ")
                started = time.monotonic()
                while time.monotonic() - started < DRIP_FOR_S and not self._stop.is_set():
                    connection.sendall(b"x")
                    time.sleep(1.0)
            except OSError:
                return  # the sender gave up: what a deadline does

    def close(self) -> None:
        self._stop.set()
        self.listener.close()


class TimedReceiver(LoopbackServer):
    """Answers 200 after `delay_s`; records when each request arrived (monotonic)."""

    def __init__(self, delay_s: float) -> None:
        self.arrivals: list[float] = []
        receiver = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                receiver.arrivals.append(time.monotonic())
                self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(delay_s)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        super().__init__(Handler)
        self.url = f"{self.base_url}/hook"


def test_a_dripping_receiver_delays_no_other_teams_delivery_beyond_one_deadline(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    settings = Settings(
        database_url=url,
        secret_key=PEPPER,
        data_dir=tmp_path / "data",
        webhook_allow_private=True,  # every receiver is on loopback
        webhook_deadline_s=DEADLINE_S,
        webhook_concurrency=2,
    )
    engine = make_engine(url)
    sessions = session_factory(engine)
    drip, fast, slow = DripReceiver(), TimedReceiver(0.0), TimedReceiver(1.0)
    created = utcnow() - timedelta(minutes=5)
    deliveries: dict[str, list[object]] = {}
    try:
        with sessions.begin() as session:
            # Team alpha's two subscriptions go to the drip; its deliveries are the oldest,
            # so a sender going in order of due time starts with them.
            plan = [
                ("alpha", drip.url, 3),
                ("alpha", drip.url, 1),
                ("beta", fast.url, 1),
                ("gamma", slow.url, 1),
            ]
            for index, (team_name, target, count) in enumerate(plan):
                team = get_or_create_team(session, name=team_name)
                subscription = WebhookSubscription(
                    team_id=team.id, url=target, events=["audit.succeeded"], secret="whsec_x"
                )
                session.add(subscription)
                session.flush()
                rows = [
                    WebhookDelivery(
                        subscription_id=subscription.id,
                        event="audit.succeeded",
                        payload={"audit": {"id": f"{team_name}-{index}-{n}"}},
                        created_at=created,
                        next_attempt_at=created + timedelta(seconds=index * 10 + n),
                    )
                    for n in range(count)
                ]
                session.add_all(rows)
                session.flush()
                deliveries[f"{team_name}-{index}"] = [row.id for row in rows]
        started_at, started = utcnow(), time.monotonic()
        reconcile_once(sessions, RecordingQueue(), policy_from(settings), now=utcnow())
        took = time.monotonic() - started
        ended_at = utcnow()
        with sessions() as session:
            rows = {row.id: row for row in session.scalars(select(WebhookDelivery))}
    finally:
        drip.close()
        fast.close()
        slow.close()
        engine.dispose()

    # Beta's delivery went out at once, not after alpha's drip: within one deadline.
    assert len(fast.arrivals) == 1
    assert fast.arrivals[0] - started < DEADLINE_S + 1.0, fast.arrivals[0] - started
    (beta,) = (rows[i] for i in deliveries["beta-2"])
    assert beta.status == "delivered"
    # Gamma's receiver took a second to answer: delivered_at is when it answered, not the
    # start of the pass.
    (gamma,) = (rows[i] for i in deliveries["gamma-3"])
    assert gamma.status == "delivered"
    assert gamma.delivered_at is not None
    assert started_at + timedelta(seconds=1.0) <= gamma.delivered_at <= ended_at
    # Each of alpha's drip subscriptions was tried once and given up at the deadline; the
    # other deliveries to the same receiver wait for its backoff instead of stalling the pass.
    assert drip.connections == 2
    first, *rest = (rows[i] for i in deliveries["alpha-0"])
    (second,) = (rows[i] for i in deliveries["alpha-1"])
    for tried in (first, second):
        assert (tried.status, tried.attempts) == ("pending", 1)
        assert tried.last_error is not None
        assert f"no answer within {DEADLINE_S:g} s" in tried.last_error
        # The 5 s backoff counts from the attempt's end, at least one deadline into the pass.
        assert tried.next_attempt_at >= started_at + timedelta(seconds=DEADLINE_S + 5 - 0.5)
    assert [(row.status, row.attempts) for row in rest] == [("pending", 0), ("pending", 0)]
    # Two slots, two dripping lanes at most one deadline each, the rest quick.
    assert took < 2 * DEADLINE_S + 3.0, took
