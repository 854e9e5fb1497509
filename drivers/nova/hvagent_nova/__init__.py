"""OpenStack Nova compute driver that runs a host through hvagent's gRPC API.

nova.conf: ``compute_driver = hvagent_nova.driver.HvagentDriver`` and an ``[hvagent]`` group
(hvagent_nova.conf). The gRPC stubs (package ``hvagent.v1``) are generated from the agent's
protos at build time and must be importable next to this package.
"""
