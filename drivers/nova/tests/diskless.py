"""Diskless instances (no root, ephemeral or swap disk, so no storage pool needed) for the
tests that are about something else: events, TLS. Mixed into a nova.test.TestCase that sets
self.ctxt."""

from nova.tests.unit import utils as test_utils


class DisklessInstances(object):

    def instance(self):
        flavor = test_utils.get_test_flavor(options={
            "root_gb": 0, "ephemeral_gb": 0, "swap": 0, "vcpus": 1, "memory_mb": 128})
        return test_utils.get_test_instance(self.ctxt, flavor=flavor, obj=True)

    def spawn(self, drv, inst):
        drv.spawn(self.ctxt, inst, test_utils.get_test_image_object(None, inst), [], None, {},
                  network_info=[])
