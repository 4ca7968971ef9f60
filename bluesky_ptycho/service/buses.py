"""Document buses the service reads: Bluesky's 0MQ proxy, NATS JetStream, Kafka.

Each bus delivers ``(name, doc)`` pairs in the order it receives them,
reconnects by itself with exponential backoff when its server goes away,
and reports an outage once (:class:`BusHealth`), so a service that runs for
months logs one line per outage, not one per attempt. A message that cannot
be decoded is logged and skipped: a bad document never stops the service.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Protocol

from .config import BusConfig, KafkaBusConfig, NatsBusConfig, ZmqBusConfig

logger = logging.getLogger(__name__)

Deliver = Callable[[str, dict], None]
FIRST_RETRY_S = 0.1


class BusHealth:
    """Whether the bus is reachable; each outage is logged once, when it starts and when it ends.

    Parameters
    ----------
    what
        The bus, in words, for the log.
    on_outage
        Called once when an outage starts, with its cause.
    """

    def __init__(self, what: str, on_outage: Callable[[str], None] = lambda cause: None) -> None:
        self.what = what
        self.on_outage = on_outage
        self.down_since: float | None = None
        self.ever_connected = False

    def down(self, cause: str) -> None:
        if self.down_since is not None:
            return
        self.down_since = time.monotonic()
        logger.warning("document bus %s is unreachable (%s): retrying with backoff", self.what, cause)
        self.on_outage(cause)

    def up(self) -> None:
        if self.down_since is not None:
            logger.warning(
                "document bus %s is back after %.1f s", self.what, time.monotonic() - self.down_since
            )
        elif not self.ever_connected:
            logger.info("connected to the document bus %s", self.what)
        self.down_since = None
        self.ever_connected = True


class Bus(Protocol):
    """A source of documents."""

    #: The bus, in words.
    description: str
    #: True: documents published while the service is disconnected are lost (0MQ);
    #: False: the bus keeps them and delivers them on reconnection (JetStream, Kafka).
    lossy: bool

    def run(self, deliver: Deliver, health: BusHealth, stopping: threading.Event) -> None:
        """Deliver documents until ``stopping`` is set."""
        ...


def make_bus(config: BusConfig) -> Bus:
    """The bus the configuration describes."""
    return {"zmq": ZmqBus, "nats": NatsBus, "kafka": KafkaBus}[config.kind](config)


def _skip(what: str, error: Exception, message: bytes) -> None:
    logger.warning(
        "skipped a message from %s that could not be decoded (%s: %s): %.80r",
        what,
        type(error).__name__,
        error,
        message,
    )


class ZmqBus:
    """A subscriber of Bluesky's 0MQ proxy (what ``bluesky.callbacks.zmq.RemoteDispatcher`` reads).

    The wire format is bluesky's Publisher's: ``prefix name pickled-document``.
    RemoteDispatcher itself cannot tell a service that the proxy went away or
    be stopped from a signal handler, so this reads the same messages from a
    SUB socket whose monitor reports the connection's state; 0MQ reconnects
    on its own, every ``RECONNECT_IVL`` doubling up to ``reconnect_max_s``.
    Pickled documents are code: subscribe only to a proxy on a trusted network.
    """

    lossy = True

    def __init__(self, config: ZmqBusConfig) -> None:
        from bluesky.callbacks.zmq import _normalize_address

        self.address = _normalize_address(config.address)
        self.prefix = config.prefix.encode()
        self.reconnect_max_s = config.reconnect_max_s
        self.receive_queue = config.receive_queue
        self.description = f"0MQ proxy {self.address}"

    def run(self, deliver: Deliver, health: BusHealth, stopping: threading.Event) -> None:
        import zmq
        from zmq.utils.monitor import recv_monitor_message

        context = zmq.Context()
        socket = context.socket(zmq.SUB)
        socket.setsockopt(zmq.RECONNECT_IVL, int(FIRST_RETRY_S * 1000))
        socket.setsockopt(zmq.RECONNECT_IVL_MAX, int(self.reconnect_max_s * 1000))
        # 0MQ's own thread keeps taking documents off the wire while this one is held up (a result being
        # written holds the interpreter): at 1 kHz its default of 1,000 is one second, then drops
        socket.setsockopt(zmq.RCVHWM, self.receive_queue)
        monitor = socket.get_monitor_socket(
            zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED
        )
        socket.setsockopt(zmq.SUBSCRIBE, self.prefix)
        socket.connect(self.address)
        poller = zmq.Poller()
        poller.register(socket, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        try:
            while not stopping.is_set():
                ready = dict(poller.poll(200))
                if monitor in ready:
                    event = recv_monitor_message(monitor)["event"]
                    if event == zmq.EVENT_CONNECTED:
                        health.up()
                    else:
                        health.down(
                            "connection lost" if event == zmq.EVENT_DISCONNECTED else "connection refused"
                        )
                if socket in ready:
                    self._decode(socket.recv(), deliver)
        finally:
            socket.disable_monitor()
            monitor.close(linger=0)
            socket.close(linger=0)
            context.term()

    def _decode(self, message: bytes, deliver: Deliver) -> None:
        try:
            prefix, name, payload = message.split(b" ", 2)
            if self.prefix and prefix != self.prefix:
                return
            name, doc = name.decode(), pickle.loads(payload)
        except Exception as error:  # any garbage on the wire
            _skip(self.description, error, message)
            return
        deliver(name, doc)


class NatsBus:
    """A durable JetStream consumer of the subjects ``bluesky-nats``'s NATSPublisher writes.

    bluesky-nats's own NATSDispatcher uses an ordered (ephemeral) consumer,
    which replays the whole stream after every restart; a durable pull
    consumer acknowledges each document once it is handed on, so a restarted
    service resumes where it stopped and an outage loses nothing.
    """

    lossy = False

    def __init__(self, config: NatsBusConfig) -> None:
        self.config = config
        self.description = (
            f"NATS {','.join(config.servers)} stream {config.stream} subject {config.subject}.>"
        )

    def run(self, deliver: Deliver, health: BusHealth, stopping: threading.Event) -> None:
        asyncio.run(self._run(deliver, health, stopping))

    async def _run(self, deliver: Deliver, health: BusHealth, stopping: threading.Event) -> None:
        import nats
        from nats.errors import TimeoutError as NatsTimeout
        from ormsgpack import unpackb

        wait = FIRST_RETRY_S
        while not stopping.is_set():
            try:
                # nats-py's own reconnection retries at a fixed interval, and forever inside connect();
                # this loop reconnects instead, with backoff and a stop between attempts
                client = await nats.connect(
                    self.config.servers,
                    allow_reconnect=False,
                    max_reconnect_attempts=1,
                    reconnect_time_wait=FIRST_RETRY_S,
                    connect_timeout=2,
                    error_cb=_quiet,
                )
                subscription = await client.jetstream().pull_subscribe(
                    f"{self.config.subject}.>", durable=self.config.durable, stream=self.config.stream
                )
            except Exception as error:  # no server (NoServersError), no stream yet (NotFoundError)
                health.down(_cause(error))
                await asyncio.sleep(wait)
                wait = min(2 * wait, self.config.reconnect_max_s)
                continue
            health.up()
            wait = FIRST_RETRY_S
            try:
                while not stopping.is_set():
                    try:
                        messages = await subscription.fetch(100, timeout=0.2)
                    except (NatsTimeout, TimeoutError):  # nothing new (fetch raises either)
                        if client.is_closed:
                            health.down("connection lost")
                            break
                        continue
                    except Exception as error:
                        health.down(_cause(error))
                        break
                    for message in messages:
                        try:
                            name, doc = message.subject.rsplit(".", 1)[-1], unpackb(message.data)
                        except Exception as error:
                            _skip(self.description, error, message.data)
                        else:
                            deliver(name, doc)
                        await message.ack()
            finally:
                if not client.is_closed:
                    await client.close()


def _cause(error: Exception) -> str:
    """An error in words for the log: its type, and its message when it has one."""
    return f"{type(error).__name__}: {error}".rstrip(": ")


async def _quiet(error: Exception) -> None:
    """nats-py reports every failed attempt here; the bus's health reports the outage once."""


class KafkaBus:
    """A consumer group of the topics ``bluesky-kafka``'s Publisher writes (msgpack with numpy arrays).

    Kafka keeps what was published while the service was away; librdkafka
    reconnects by itself (``reconnect.backoff.max.ms``). librdkafka says when
    no broker answers; that the bus is there is known when a document comes.
    """

    lossy = False

    def __init__(self, config: KafkaBusConfig) -> None:
        self.config = config
        self.description = f"Kafka {config.bootstrap_servers} topics {','.join(config.topics)}"

    def consumer(self, deliver: Deliver, health: BusHealth | None = None):
        """The ``bluesky_kafka.BlueskyConsumer`` this bus polls; librdkafka's errors go to ``health``."""
        import msgpack
        import msgpack_numpy
        from bluesky_kafka import BlueskyConsumer

        def process(consumer, topic, name, doc) -> bool:
            if health is not None:
                health.up()
            deliver(name, doc)
            return True

        return BlueskyConsumer(
            topics=list(self.config.topics),
            bootstrap_servers=self.config.bootstrap_servers,
            group_id=self.config.group_id,
            consumer_config={
                "auto.offset.reset": "latest",
                "reconnect.backoff.max.ms": 30_000,
                **({} if health is None else {"error_cb": partial(_kafka_error, health)}),
                **self.config.librdkafka_settings(),
            },
            deserializer=partial(msgpack.loads, object_hook=msgpack_numpy.decode),
            process_document=process,
        )

    def run(self, deliver: Deliver, health: BusHealth, stopping: threading.Event) -> None:
        def message_error(message) -> bool:
            health.down(str(message.error()))
            return True

        logger.info("waiting for documents on the document bus %s", self.description)
        self.consumer(deliver, health).start_polling(
            continue_polling=lambda: not stopping.is_set(),
            on_message_error=message_error,
            on_exception=lambda error: logger.warning("Kafka: %s", error),
        )


def _kafka_error(health: BusHealth, error) -> None:
    """librdkafka's report of an error outside any message: no broker reachable is an outage."""
    from confluent_kafka import KafkaError

    if error.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._RESOLVE):
        health.down(error.str())
    else:
        logger.warning("Kafka: %s", error.str())
