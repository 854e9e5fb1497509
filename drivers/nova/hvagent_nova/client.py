"""gRPC channel to the agent and the mapping of its status codes to nova.exception."""

import grpc

from nova import exception

from hvagent.v1 import (console_pb2_grpc, domain_pb2_grpc, host_pb2_grpc, image_pb2_grpc,
                        metrics_pb2_grpc, migration_pb2_grpc, operation_pb2_grpc,
                        storage_pb2_grpc)


def _read(path):
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()


# After the agent restarts, calls fail fast until the channel has reconnected: keep gRPC's
# reconnect backoff short (its default grows to 120 s).
RECONNECT_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 500),
                     ("grpc.min_reconnect_backoff_ms", 500),
                     ("grpc.max_reconnect_backoff_ms", 5000)]


def make_channel(group, options=()):
    """A channel per the [hvagent] group: plain text only when asked for explicitly."""
    options = RECONNECT_OPTIONS + list(options)
    if group.plaintext:
        return grpc.insecure_channel(group.address, options=options)
    if not group.ca_file:
        raise exception.InvalidConfiguration(
            "[hvagent] ca_file is required (or plaintext = true for an agent in "
            "--plaintext-loopback mode)")
    if bool(group.cert_file) != bool(group.key_file):
        raise exception.InvalidConfiguration(
            "[hvagent] cert_file and key_file go together")
    try:
        creds = grpc.ssl_channel_credentials(
            _read(group.ca_file), _read(group.key_file), _read(group.cert_file))
    except OSError as e:
        raise exception.InvalidConfiguration("[hvagent] TLS files: %s" % e)
    if group.tls_server_name:
        options.append(("grpc.ssl_target_name_override", group.tls_server_name))
    return grpc.secure_channel(group.address, creds, options=options)


class Agent(object):
    """The agent's services on one channel."""

    def __init__(self, channel, address, timeout):
        self.channel = channel
        self.address = address
        self.timeout = timeout
        self.host = host_pb2_grpc.HostServiceStub(channel)
        self.domains = domain_pb2_grpc.DomainServiceStub(channel)
        self.storage = storage_pb2_grpc.StorageServiceStub(channel)
        self.metrics = metrics_pb2_grpc.MetricsServiceStub(channel)
        self.consoles = console_pb2_grpc.ConsoleServiceStub(channel)
        self.images = image_pb2_grpc.ImageServiceStub(channel)
        self.migration = migration_pb2_grpc.MigrationServiceStub(channel)
        self.operations = operation_pb2_grpc.OperationServiceStub(channel)

    def call(self, method, request, instance=None, extra_timeout=0):
        """Runs one unary call; agent errors become nova exceptions (see to_nova)."""
        try:
            return method(request, timeout=self.timeout + extra_timeout)
        except grpc.RpcError as e:
            raise to_nova(e, self.address, instance) from None


def code_of(err):
    return err.code() if isinstance(err, grpc.RpcError) else None


def to_nova(err, address, instance=None):
    """gRPC status -> nova.exception.

    NOT_FOUND -> InstanceNotFound (NotFound for non-instance objects), ALREADY_EXISTS ->
    InstanceExists, INVALID_ARGUMENT -> InvalidInput, FAILED_PRECONDITION ->
    InstanceInvalidState, RESOURCE_EXHAUSTED -> ComputeResourcesUnavailable, UNAVAILABLE and
    DEADLINE_EXCEEDED -> HypervisorUnavailable, UNAUTHENTICATED / PERMISSION_DENIED ->
    Forbidden, UNIMPLEMENTED -> NotImplementedError (the host cannot do it), others ->
    InternalError. The agent's message is kept in every case."""
    code = err.code()
    details = err.details() or code.name
    name = getattr(instance, "name", None)
    uuid = getattr(instance, "uuid", None) or name
    if code == grpc.StatusCode.NOT_FOUND:
        if instance is not None:
            return exception.InstanceNotFound(instance_id=uuid)
        return exception.NotFound("hvagent: %s" % details)
    if code == grpc.StatusCode.ALREADY_EXISTS:
        return exception.InstanceExists(name=name or details)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return exception.InvalidInput(reason="hvagent: %s" % details)
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        if instance is not None:
            return exception.InstanceInvalidState(
                instance_uuid=uuid, attr="hvagent state", state=details,
                method="this action")
        return exception.Invalid("hvagent: %s" % details)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return exception.ComputeResourcesUnavailable(reason="hvagent: %s" % details)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return exception.HypervisorUnavailable(
            "hvagent at %s unavailable: %s: %s" % (address, code.name, details))
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return exception.Forbidden("hvagent at %s refused the call: %s: %s"
                                   % (address, code.name, details))
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return NotImplementedError("hvagent: %s" % details)
    return exception.InternalError(err="hvagent: %s: %s" % (code.name, details))
