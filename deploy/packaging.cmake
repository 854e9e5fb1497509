# Debian package of the agent (CPack DEB): `cpack --config build/CPackConfig.cmake` or
# `ninja -C build package`. hvagentd, hvctl and the CloudStack extension, the example config as a
# conffile under /etc/hvagent/, the systemd unit, the Prometheus examples and the docs.
# Depends: computed by dpkg-shlibdeps from what the binaries really link, plus the tools the
# agent runs (lvm2, parted, fdisk, util-linux, and iproute2's ip for the VLAN and VXLAN networks
# it makes); libvirtd itself is only recommended (the agent may talk to a remote one).
include(GNUInstallDirs)
install(FILES deploy/hvagent.toml DESTINATION /etc/hvagent)
install(FILES deploy/systemd/hvagentd.service DESTINATION /lib/systemd/system)
install(FILES deploy/prometheus/prometheus.yml deploy/prometheus/hvagent-rules.yml
        DESTINATION ${CMAKE_INSTALL_DATADIR}/hvagent/prometheus)
install(PROGRAMS deploy/dev-certs.sh DESTINATION ${CMAKE_INSTALL_DATADIR}/hvagent)
install(FILES README.md docs/architecture.md docs/configuration.md docs/security.md docs/metrics.md
              docs/rest-api.md docs/openapi.yaml docs/arm64.md docs/cloudstack.md docs/xen-event-channels.md
        DESTINATION ${CMAKE_INSTALL_DOCDIR})

set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME hvagent)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_CONTACT "hvagent developers <hvagent@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "host agent for Xen (ARM64) and KVM hosts: gRPC/REST for VMs, LVM and partition disks, metrics")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION admin)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_STRIP_FILES ON)  # debug info stays in the build tree
set(CPACK_DEBIAN_PACKAGE_DEPENDS "lvm2, parted, fdisk, util-linux, iproute2")
# qemu-utils: qemu-img converts qcow2 images on import (raw imports need nothing).
# libjs-xterm: the browser console's terminal (xterm.js, served from /usr/share/javascript/xterm)
# when [console] ws_listen is set; an agent without the web console (Xen dom0s, the default)
# does not need it.
set(CPACK_DEBIAN_PACKAGE_RECOMMENDS "libvirt-daemon-system, qemu-utils, libjs-xterm")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA ${PROJECT_SOURCE_DIR}/deploy/debian/conffiles
                                       ${PROJECT_SOURCE_DIR}/deploy/debian/postrm)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
if(CMAKE_CROSSCOMPILING)
  # The arm64 package (deploy/cross/build-arm64.sh). dpkg-shlibdeps cannot look into a sysroot
  # (it asks dpkg, and the arm64 libraries are unpacked, not installed):
  # deploy/cross/arm64-depends.py computes the same Depends from the arm64 .debs' own shlibs
  # files, and cpack reads them through cpack-depends.cmake.
  set(CPACK_DEBIAN_PACKAGE_ARCHITECTURE arm64)
  set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS OFF)
  set(CPACK_HVAGENT_DEPENDS_FILE ${CMAKE_BINARY_DIR}/arm64-depends.txt)
  set(CPACK_PROJECT_CONFIG_FILE ${PROJECT_SOURCE_DIR}/deploy/cross/cpack-depends.cmake)
endif()
include(CPack)
