"""The reconstruction service: ``bluesky-ptycho serve`` on a document bus (0MQ proxy, NATS JetStream, Kafka)."""

from .config import ConfigError, ServiceConfig, load_config
from .service import ReconstructionService

__all__ = ["ConfigError", "ReconstructionService", "ServiceConfig", "load_config"]
