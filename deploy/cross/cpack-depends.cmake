# Read by cpack for the arm64 package (deploy/packaging.cmake): the library Depends computed by
# deploy/cross/arm64-depends.py, after the tools the agent runs.
if(NOT EXISTS "${CPACK_HVAGENT_DEPENDS_FILE}")
  message(FATAL_ERROR "${CPACK_HVAGENT_DEPENDS_FILE} is missing: run deploy/cross/arm64-depends.py first "
                      "(deploy/cross/build-arm64.sh does)")
endif()
file(READ "${CPACK_HVAGENT_DEPENDS_FILE}" hvagent_library_depends)
string(STRIP "${hvagent_library_depends}" hvagent_library_depends)
set(CPACK_DEBIAN_PACKAGE_DEPENDS "${CPACK_DEBIAN_PACKAGE_DEPENDS}, ${hvagent_library_depends}")
