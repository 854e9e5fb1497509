"""A guest's whole life through the gRPC API (Python grpcio client), checked with virsh."""

import os
import time
import unittest

import grpc

from agent_harness import AgentTestCase, domstate, small_spec, unique_name, virsh
from hvagent.v1 import domain_pb2, host_pb2


class GrpcLifecycleTest(AgentTestCase):
    def test_host_and_capacity(self):
        host = self.agent.host.GetHost(host_pb2.GetHostRequest())
        self.assertEqual(host.hypervisor_type, "QEMU")
        self.assertEqual(host.arch, "x86_64")
        self.assertGreater(host.memory_bytes, 0)
        self.assertGreater(host.cpus, 0)
        self.assertTrue(host.connected)
        self.assertEqual(host.uri, "qemu:///system")

        name = unique_name("cap")
        before = self.agent.host.GetCapacity(host_pb2.GetCapacityRequest())
        self.agent.domains.CreateDomain(domain_pb2.CreateDomainRequest(spec=small_spec(name), start=True))
        after = self.agent.host.GetCapacity(host_pb2.GetCapacityRequest())
        self.assertEqual(after.domains_running, before.domains_running + 1)
        self.assertEqual(after.allocated_vcpus, before.allocated_vcpus + 1)
        self.assertEqual(after.allocated_memory_bytes, before.allocated_memory_bytes + 64 * 2**20)

    def test_round_trip(self):
        d = self.agent.domains
        name = unique_name("grpc")
        created = d.CreateDomain(domain_pb2.CreateDomainRequest(
            spec=small_spec(name, with_disk_dir=self.workdir), start=True))
        self.assertEqual(created.name, name)
        self.assertEqual(created.state, domain_pb2.DOMAIN_STATE_RUNNING)
        self.assertEqual(domstate(name), "running")
        self.assertIn(name, virsh("domblklist", name).stdout)

        got = d.GetDomain(domain_pb2.GetDomainRequest(name=name))
        self.assertEqual(got.uuid, created.uuid)
        self.assertEqual(got.vcpus, 1)
        self.assertEqual(got.memory_mib, 64)
        self.assertTrue(got.persistent)
        names = [x.name for x in d.ListDomains(domain_pb2.ListDomainsRequest()).domains]
        self.assertIn(name, names)

        ref = domain_pb2.DomainRef(name=name)
        self.assertEqual(d.SuspendDomain(ref).state, domain_pb2.DOMAIN_STATE_PAUSED)
        self.assertEqual(domstate(name), "paused")
        self.assertEqual(d.ResumeDomain(ref).state, domain_pb2.DOMAIN_STATE_RUNNING)
        self.assertEqual(domstate(name), "running")

        # SeaBIOS without an OS ignores ACPI: the deadline passes and the agent forces it off.
        r = d.ShutdownDomain(domain_pb2.ShutdownDomainRequest(name=name, timeout_seconds=2))
        self.assertTrue(r.forced)
        self.assertEqual(r.domain.state, domain_pb2.DOMAIN_STATE_SHUTOFF)
        self.assertEqual(domstate(name), "shut off")

        self.assertEqual(d.StartDomain(ref).state, domain_pb2.DOMAIN_STATE_RUNNING)
        self.assertEqual(domstate(name), "running")
        self.assertEqual(d.DestroyDomain(ref).state, domain_pb2.DOMAIN_STATE_SHUTOFF)
        self.assertEqual(domstate(name), "shut off")

        d.DeleteDomain(domain_pb2.DeleteDomainRequest(name=name))
        self.assertNotEqual(virsh("dominfo", name, check=False).returncode, 0)
        with self.assertRaises(grpc.RpcError) as ctx:
            d.GetDomain(domain_pb2.GetDomainRequest(name=name))
        self.assertEqual(ctx.exception.code(), grpc.StatusCode.NOT_FOUND)

    def test_resize_in_place_stopped_then_running(self):
        """UpdateDomain on real QEMU: a shut-off domain takes any size in its definition; a
        running one hot-plugs vCPUs up to spec.max_vcpus and balloons memory down, live and in
        its definition; past its maximums, or with bad input, nothing changes (checked with
        virsh)."""
        d = self.agent.domains
        name = unique_name("rsz")
        spec = small_spec(name)
        spec.max_vcpus = 2
        d.CreateDomain(domain_pb2.CreateDomainRequest(spec=spec))
        self.assertEqual(virsh("vcpucount", name, "--config", "--maximum").stdout.strip(), "2")

        got = d.UpdateDomain(domain_pb2.UpdateDomainRequest(name=name, vcpus=2, memory_mib=128))
        self.assertEqual((got.vcpus, got.memory_mib, got.state), (2, 128, domain_pb2.DOMAIN_STATE_SHUTOFF))
        info = virsh("dominfo", name).stdout
        self.assertRegex(info, r"CPU\(s\):\s+2\n")
        self.assertRegex(info, r"Max memory:\s+131072 KiB")
        self.assertRegex(info, r"Used memory:\s+131072 KiB")
        got = d.UpdateDomain(domain_pb2.UpdateDomainRequest(name=name, vcpus=1, memory_mib=96))
        self.assertEqual((got.vcpus, got.memory_mib), (1, 96))
        self.assertRegex(virsh("dominfo", name).stdout, r"Max memory:\s+98304 KiB")

        for bad, field in ((dict(vcpus=0), "vcpus"), (dict(memory_mib=8), "memory_mib"), ({}, "vcpus")):
            with self.assertRaises(grpc.RpcError) as ctx:
                d.UpdateDomain(domain_pb2.UpdateDomainRequest(name=name, **bad))
            self.assertEqual(ctx.exception.code(), grpc.StatusCode.INVALID_ARGUMENT, bad)
            self.assertIn(field, ctx.exception.details())
        self.assertEqual(virsh("vcpucount", name, "--config", "--current").stdout.strip(), "1")

        ref = domain_pb2.DomainRef(name=name)
        d.StartDomain(ref)
        got = d.UpdateDomain(domain_pb2.UpdateDomainRequest(name=name, vcpus=2))
        self.assertEqual((got.vcpus, got.state), (2, domain_pb2.DOMAIN_STATE_RUNNING))
        self.assertEqual(virsh("vcpucount", name, "--live", "--current").stdout.strip(), "2")
        self.assertEqual(virsh("vcpucount", name, "--config", "--current").stdout.strip(), "2")
        for bad, field in ((dict(vcpus=3), "vcpus"), (dict(memory_mib=256), "memory_mib")):
            with self.assertRaises(grpc.RpcError) as ctx:
                d.UpdateDomain(domain_pb2.UpdateDomainRequest(name=name, **bad))
            self.assertEqual(ctx.exception.code(), grpc.StatusCode.FAILED_PRECONDITION, bad)
            self.assertIn(field, ctx.exception.details())
        self.assertEqual(virsh("vcpucount", name, "--live", "--current").stdout.strip(), "2")
        self.assertRegex(virsh("dominfo", name).stdout, r"Max memory:\s+98304 KiB")

        # Memory down within the maximum: the balloon's target, live and in the definition.
        d.UpdateDomain(domain_pb2.UpdateDomainRequest(name=name, memory_mib=80))
        self.assertIn("<currentMemory unit='KiB'>81920</currentMemory>",
                      virsh("dumpxml", name, "--inactive").stdout)
        d.DeleteDomain(domain_pb2.DeleteDomainRequest(name=name, force=True))

    def test_cpu_topology_and_shares_reach_qemu(self):
        """Nova's hw:cpu_sockets/cores/threads and quota:cpu_shares as the agent writes them:
        libvirt's definition holds them, QEMU runs with that -smp topology and libvirt reports
        the shares it gave the guest's cgroup. A topology that does not cover the vCPUs is
        refused naming the field, and nothing is defined."""
        d = self.agent.domains
        bad = unique_name("topo")
        spec = small_spec(bad)
        spec.vcpus = 4
        spec.cpu_topology.sockets, spec.cpu_topology.cores, spec.cpu_topology.threads = 3, 1, 1
        with self.assertRaises(grpc.RpcError) as ctx:
            d.CreateDomain(domain_pb2.CreateDomainRequest(spec=spec, start=True))
        self.assertEqual(ctx.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("spec.cpu_topology", ctx.exception.details())
        self.assertNotEqual(virsh("dominfo", bad, check=False).returncode, 0)

        name = unique_name("topo")
        spec = small_spec(name)
        spec.vcpus = 4
        spec.cpu_topology.sockets, spec.cpu_topology.cores, spec.cpu_topology.threads = 2, 1, 2
        spec.cpu_shares = 2048
        d.CreateDomain(domain_pb2.CreateDomainRequest(spec=spec, start=True))  # tearDown removes it
        xml = virsh("dumpxml", name, "--inactive").stdout
        self.assertIn("<topology sockets='2'", xml)
        self.assertIn("cores='1' threads='2'/>", xml)
        self.assertIn("<shares>2048</shares>", xml)
        with open("/run/libvirt/qemu/%s.pid" % name) as f:
            pid = int(f.read().strip())
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            argv = f.read().split(b"\0")
        smp = argv[argv.index(b"-smp") + 1].decode()
        self.assertIn("sockets=2", smp)
        self.assertIn("threads=2", smp)
        self.assertRegex(virsh("schedinfo", name).stdout, r"cpu_shares\s*:\s*2048")

    def test_listing_matches_libvirt_for_defined_running_and_transient_domains(self):
        """ListDomains reads state, vCPUs and memory from one bulk call on QEMU: every field must
        still be what virsh says, including persistence (a transient domain made with virsh)."""
        d = self.agent.domains
        stopped, running, transient = unique_name("ls"), unique_name("ls"), unique_name("ls")
        spec = small_spec(stopped)
        spec.vcpus, spec.memory_mib = 2, 96
        d.CreateDomain(domain_pb2.CreateDomainRequest(spec=spec))
        d.CreateDomain(domain_pb2.CreateDomainRequest(spec=small_spec(running), start=True))
        xml = virsh("dumpxml", running).stdout.replace(f"<name>{running}</name>", f"<name>{transient}</name>")
        xml = "\n".join(line for line in xml.splitlines() if "<uuid>" not in line)
        path = os.path.join(self.workdir, "transient.xml")
        with open(path, "w") as f:
            f.write(xml)
        virsh("create", path)  # running, never defined: transient
        # The agent answers from its event-fed view: a domain made behind its back (virsh) is
        # listed once libvirt's lifecycle event has reached it, within the event latency.
        deadline = time.monotonic() + 10
        while True:
            listed = {x.name: x for x in d.ListDomains(domain_pb2.ListDomainsRequest()).domains}
            if transient in listed or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        for name in (stopped, running, transient):
            self.assertIn(name, listed)
            info = dict(line.split(":", 1) for line in virsh("dominfo", name).stdout.splitlines() if ":" in line)
            got = listed[name]
            self.assertEqual(got.vcpus, int(info["CPU(s)"].strip()), name)
            self.assertEqual(got.memory_mib, int(info["Max memory"].split()[0]) // 1024, name)
            self.assertEqual(got.persistent, info["Persistent"].strip() == "yes", name)
            self.assertEqual(domstate(name), {domain_pb2.DOMAIN_STATE_RUNNING: "running",
                                              domain_pb2.DOMAIN_STATE_SHUTOFF: "shut off"}[got.state], name)
        self.assertFalse(listed[transient].persistent)
        self.assertEqual((listed[stopped].vcpus, listed[stopped].memory_mib), (2, 96))

    def test_delete_running_needs_force(self):
        d = self.agent.domains
        name = unique_name("force")
        d.CreateDomain(domain_pb2.CreateDomainRequest(spec=small_spec(name), start=True))
        with self.assertRaises(grpc.RpcError) as ctx:
            d.DeleteDomain(domain_pb2.DeleteDomainRequest(name=name))
        self.assertEqual(ctx.exception.code(), grpc.StatusCode.FAILED_PRECONDITION)
        self.assertEqual(domstate(name), "running")
        d.DeleteDomain(domain_pb2.DeleteDomainRequest(name=name, force=True))
        self.assertNotEqual(virsh("dominfo", name, check=False).returncode, 0)

    def test_health_service_and_reflection(self):
        # grpc.health.v1 and reflection by hand: Debian's grpcio ships neither helper module.
        check = self.agent.channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=lambda b: b, response_deserializer=lambda b: b)
        self.assertEqual(check(b""), b"\x08\x01")  # status: SERVING
        self.assertEqual(check(b"\x0a\x18hvagent.v1.DomainService"), b"\x08\x01")

        reflect = self.agent.channel.stream_stream(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            request_serializer=lambda b: b, response_deserializer=lambda b: b)
        reply = next(reflect(iter([b"\x3a\x00"])))  # list_services: ""
        for service in (b"hvagent.v1.HostService", b"hvagent.v1.DomainService", b"hvagent.v1.EventService"):
            self.assertIn(service, reply)


if __name__ == "__main__":
    unittest.main()
