#!/usr/bin/env bash
# A whole OpenStack cloud on this one host, booting servers through hvagent (issue 29):
# installs from Debian 12's archive, configures and starts MariaDB, RabbitMQ, Keystone, Glance,
# Placement, Neutron (ML2 with the Open vSwitch agent on br-int, OVS's userspace datapath, a flat
# provider network) and Nova (api, conductor, scheduler, compute with compute_driver =
# hvagent.HvagentDriver from the project's python3-hvagent-nova .deb, real port binding), talking
# over mutual TLS to hvagentd from the project's .deb, which drives libvirt's embedded QEMU driver
# (TCG) with a GPT partition pool on a loop device. Then runs test_openstack.py (the openstack
# CLI, as a user types it) and tears everything down, on failure too (trap).
#
#   tests/cloud/openstack/run.sh --agent-deb DEB [--nova-deb DEB] [--keep-logs DIR]
#     --agent-deb   hvagent_*_amd64.deb (CPack, as the package tier builds it)
#     --nova-deb    python3-hvagent-nova_*_all.deb (default: drivers/nova/build-deb.sh builds it)
#     --keep-logs   copy every service's log there before the teardown
#
# Nothing here needs systemd (CI machines run none): every daemon is started directly, with its
# own config files under one work directory, as its Debian user, and stopped by its pid. The
# packages' postinsts start nothing (/usr/sbin/policy-rc.d answers 101 while they install) and
# configure nothing (their debconf questions default to "no": no db, no endpoints).
# Every password is made here with openssl rand; the /etc files of the packages are not touched.
# Prints "Ran N tests" / "OK" (unittest's summary), which deploy/test.sh counts.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
agent_deb="" nova_deb="" keep_logs=""
while (($#)); do
  case $1 in
    --agent-deb) agent_deb=$(realpath "$2"); shift 2 ;;
    --nova-deb) nova_deb=$(realpath "$2"); shift 2 ;;
    --keep-logs) keep_logs=$(realpath -m "$2"); shift 2 ;;
    *) echo "usage: run.sh --agent-deb DEB [--nova-deb DEB] [--keep-logs DIR]" >&2; exit 2 ;;
  esac
done
[[ -f $agent_deb ]] || { echo "run.sh: --agent-deb FILE is required" >&2; exit 2; }
((EUID == 0)) || { echo "run.sh: needs root (apt-get, loop devices, daemons as their users)" >&2; exit 2; }

t0=$SECONDS
stamp() { printf '[openstack %4d s] %s\n' $((SECONDS - t0)) "$*"; }
declare -A took=()  # phase -> seconds, printed at the end

W=$(mktemp -d /var/tmp/hvos.XXXXXX)
chmod 755 "$W"
mkdir -p "$W/log" "$W/run" "$W/etc"
pids=()      # daemons we started, in start order (stopped in reverse)
loop=""      # the pool's loop device
policy_rc="" # set when this script made /usr/sbin/policy-rc.d
DBDATA=""    # MariaDB's data directory (in /dev/shm)
ours=()      # the project's packages this run installed
OVS_RUN=/var/run/openvswitch  # OVS's default socket directory: libvirt's ovs-vsctl calls use it
ovs_remote="" # the ovsdb-server remote this script added (Neutron's agent's socket)
ovs_bridges=() # the OVS bridges this script made
sudoers=""    # the sudoers drop-in this script made (privsep for Neutron's OVS agent)

# --- teardown -------------------------------------------------------------------------------------
stop_pid() {  # stop_pid PID: SIGTERM to its process group, SIGKILL after 20 s
  local pid=$1
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 200); do
    kill -0 "$pid" 2>/dev/null || return 0
    [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) == Z ]] && return 0
    sleep 0.1
  done
  kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
}

teardown() {
  local rc=$? i
  set +e
  stamp "teardown (exit $rc)"
  if ((rc != 0)); then  # the log written last is most likely the one that says why
    i=$(ls -t "$W"/log/*.log 2>/dev/null | head -n 1)
    [[ -n $i ]] && { echo "--- last lines of $i:"; tail -n 30 "$i"; } >&2
  fi
  if [[ -n $keep_logs ]]; then mkdir -p "$keep_logs" && cp -r "$W/log/." "$keep_logs/"; fi
  # Domains the agent still holds go with the agent's embedded libvirt; guests are its children.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do stop_pid "${pids[i]}"; done
  # QEMU processes of the embedded driver run in their own session: find them by our root dir.
  for i in $(pgrep -f "$W/libvirt" || true); do kill -KILL "$i" 2>/dev/null; done
  [[ -n $loop ]] && losetup -d "$loop"
  teardown_ovs
  [[ -n $policy_rc ]] && rm -f /usr/sbin/policy-rc.d
  [[ -n $sudoers ]] && rm -f "$sudoers" "$sudoers.tmp"
  # The project's two packages go if this run installed them; Debian's stay (the next run's
  # apt-get then has nothing to do).
  if ((${#ours[@]})); then
    DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq "${ours[@]}" >/dev/null 2>&1
  fi
  rm -rf "$W"
  [[ -n $DBDATA ]] && rm -rf "$DBDATA"
  stamp "torn down"
  exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT TERM

# --- helpers ----------------------------------------------------------------------------------------
free_port() {
  /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
secret() { openssl rand -hex 16; }

daemon() {  # daemon NAME USER ARGV...: runs ARGV as USER in its own session, log in $W/log/NAME.log
  local name=$1 user=$2
  shift 2
  setsid runuser -u "$user" -- "$@" >"$W/log/$name.log" 2>&1 &
  pids+=($!)
  echo "$!" >"$W/run/$name.pid"
}

wait_for() {  # wait_for SECONDS WHAT COMMAND...: until COMMAND succeeds
  local deadline=$((SECONDS + $1)) what=$2
  shift 2
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS > deadline)); then
      echo "run.sh: $what not ready within the time" >&2
      tail -n 40 "$W"/log/*.log >&2 || true
      return 1
    fi
    sleep 0.5
  done
}

conf() {  # conf FILE OWNER: stdin to FILE, readable by OWNER's group only (it holds passwords)
  mkdir -p "$(dirname "$1")"
  cat >"$1"
  chown "root:$2" "$1"
  chmod 640 "$1"
}

as() { local user=$1; shift; runuser -u "$user" -- "$@"; }

# --- 1. packages ------------------------------------------------------------------------------------
packages=(mariadb-server rabbitmq-server keystone glance-api placement-api nova-api nova-conductor
          nova-scheduler nova-compute neutron-server neutron-openvswitch-agent openvswitch-switch sudo
          python3-openstackclient python3-osc-placement
          python3-pymysql uwsgi-plugin-python3 syslinux syslinux-common mtools dosfstools)
install_packages() {
  local t=$SECONDS missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
  done
  if ((${#missing[@]})); then
    # Debian's services would start from their postinsts; nothing may start behind our back.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
      printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
      chmod 755 /usr/sbin/policy-rc.d
      policy_rc=1
    fi
    stamp "apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      -o Dpkg::Options::=--force-confold "${missing[@]}" >"$W/log/apt.log"
    if [[ -n $policy_rc ]]; then rm -f /usr/sbin/policy-rc.d; policy_rc=""; fi
  fi
  if [[ -z $nova_deb ]]; then
    mkdir -p "$W/deb"
    nova_deb=$("$repo/drivers/nova/build-deb.sh" "$W/deb" | tail -n 1)
  fi
  for p in hvagent python3-hvagent-nova; do
    dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q 'ok installed' && continue
    ours+=("$p")
  done
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$agent_deb" "$nova_deb" \
    >>"$W/log/apt.log"
  took[install]=$((SECONDS - t))
}

# --- 2. MariaDB and RabbitMQ (private instances: own data dirs, socket and ports) -------------------
DBSOCK=$W/mysql/mysqld.sock
sql() { mariadb --no-defaults --socket="$DBSOCK" -u root -e "$1"; }
start_mariadb() {
  # The data in memory and never synced: a throw-away cloud, and the schema migrations of
  # five services (hundreds of DDL statements) take minutes on a synced disk.
  DBDATA=$(mktemp -d /dev/shm/hvos-db.XXXXXX)
  install -d -o mysql -g mysql "$W/mysql"
  chown mysql:mysql "$DBDATA"
  mariadb-install-db --no-defaults --user=mysql --datadir="$DBDATA" --skip-test-db \
    --auth-root-authentication-method=socket >"$W/log/mariadb-install.log" 2>&1
  daemon mariadb mysql mariadbd --no-defaults --datadir="$DBDATA" --socket="$DBSOCK" \
    --skip-networking --pid-file="$W/mysql/mariadb.pid" --max-connections=500 \
    --innodb-buffer-pool-size=64M --performance-schema=OFF --innodb-flush-log-at-trx-commit=0 \
    --innodb-doublewrite=0 --sync-frm=0 --innodb-flush-method=nosync
  wait_for 60 MariaDB sql "SELECT 1"
}
db() {  # db NAME USER PASSWORD: prints the SQLAlchemy URL
  sql "CREATE DATABASE $1; GRANT ALL ON $1.* TO '$2'@'localhost' IDENTIFIED BY '$3';"
  echo "mysql+pymysql://$2:$3@localhost/$1?unix_socket=$DBSOCK"
}

start_rabbitmq() {
  local dist epmd
  RABBIT_PORT=$(free_port) dist=$(free_port) epmd=$(free_port) RABBIT_PW=$(secret)
  install -d -o rabbitmq -g rabbitmq "$W/rabbit"
  printf '[].\n' >"$W/rabbit/enabled_plugins"
  chown rabbitmq "$W/rabbit/enabled_plugins"
  # Its own epmd on its own port, so stopping it touches no other Erlang node on the host.
  RABBIT_ENV=(env HOME="$W/rabbit" ERL_EPMD_PORT="$epmd" RABBITMQ_NODENAME=hvos@localhost
              RABBITMQ_CONF_ENV_FILE=/dev/null RABBITMQ_CONFIG_FILE="$W/rabbit/rabbitmq"
              RABBITMQ_ENABLED_PLUGINS_FILE="$W/rabbit/enabled_plugins"
              RABBITMQ_MNESIA_BASE="$W/rabbit/mnesia" RABBITMQ_LOG_BASE="$W/rabbit/log"
              RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT="$RABBIT_PORT"
              RABBITMQ_DIST_PORT="$dist" RABBITMQ_PID_FILE="$W/rabbit/pid")
  printf 'loopback_users = none\n' >"$W/rabbit/rabbitmq.conf"
  daemon epmd rabbitmq "${RABBIT_ENV[@]}" epmd -port "$epmd" -address 127.0.0.1
  daemon rabbitmq rabbitmq "${RABBIT_ENV[@]}" /usr/lib/rabbitmq/bin/rabbitmq-server
  wait_for 120 RabbitMQ as rabbitmq "${RABBIT_ENV[@]}" /usr/lib/rabbitmq/bin/rabbitmqctl await_startup
  as rabbitmq "${RABBIT_ENV[@]}" /usr/lib/rabbitmq/bin/rabbitmqctl add_user openstack "$RABBIT_PW" >/dev/null
  as rabbitmq "${RABBIT_ENV[@]}" /usr/lib/rabbitmq/bin/rabbitmqctl set_permissions openstack '.*' '.*' '.*' >/dev/null
  TRANSPORT="rabbit://openstack:$RABBIT_PW@127.0.0.1:$RABBIT_PORT/"
}

# --- 3. Keystone ----------------------------------------------------------------------------------
# "Connection: close": uwsgi's --http-socket does not keep connections alive, and python-requests
# reusing one got "Connection reset by peer" on its second request.
uwsgi_app() {  # uwsgi_app NAME USER PORT WSGI_FILE ENV...: one process, a few threads
  local name=$1 user=$2 port=$3 app=$4 envs=() e
  shift 4
  for e in "$@"; do envs+=(--env "$e"); done
  daemon "$name" "$user" uwsgi_python311 --http-socket "127.0.0.1:$port" --wsgi-file "$app" \
    --master --processes 1 --threads 4 --enable-threads --lazy-apps --die-on-term \
    --buffer-size 65535 --need-app --add-header "Connection: close" "${envs[@]}"
}

service_auth() {  # service_auth SECTION USER PASSWORD [LINE...]: a section logging in as a service user
  local section=$1 user=$2 pw=$3
  shift 3
  printf '[%s]\n' "$section"
  (($# == 0)) || printf '%s\n' "$@"
  cat <<INI
auth_url = $KEYSTONE
auth_type = password
project_domain_name = Default
user_domain_name = Default
project_name = service
username = $user
password = $pw
INI
}

authtoken() {  # authtoken USER PASSWORD: the [keystone_authtoken] section of a service
  service_auth keystone_authtoken "$1" "$2" "www_authenticate_uri = $KEYSTONE"
}

start_keystone() {
  local port url
  port=$(free_port) ADMIN_PW=$(secret)
  KEYSTONE=http://127.0.0.1:$port/v3
  url=$(db keystone keystone "$(secret)")
  install -d -o keystone -g keystone "$W/keystone" "$W/keystone/fernet" "$W/keystone/credential"
  conf "$W/etc/keystone/keystone.conf" keystone <<INI
[database]
connection = $url
[token]
provider = fernet
[fernet_tokens]
key_repository = $W/keystone/fernet
[fernet_receipts]
key_repository = $W/keystone/fernet
[credential]
key_repository = $W/keystone/credential
INI
  local ks=(keystone-manage --config-file "$W/etc/keystone/keystone.conf")
  {
    as keystone "${ks[@]}" db_sync
    as keystone "${ks[@]}" fernet_setup --keystone-user keystone --keystone-group keystone
    as keystone "${ks[@]}" credential_setup --keystone-user keystone --keystone-group keystone
    as keystone "${ks[@]}" bootstrap --bootstrap-password "$ADMIN_PW" --bootstrap-region-id RegionOne \
      --bootstrap-admin-url "$KEYSTONE" --bootstrap-internal-url "$KEYSTONE" --bootstrap-public-url "$KEYSTONE"
  } >"$W/log/keystone-manage.log" 2>&1
  uwsgi_app keystone keystone "$port" /usr/bin/keystone-wsgi-public \
    "OS_KEYSTONE_CONFIG_FILES=$W/etc/keystone/keystone.conf"
  export OS_AUTH_URL=$KEYSTONE OS_USERNAME=admin OS_PASSWORD=$ADMIN_PW OS_PROJECT_NAME=admin \
    OS_USER_DOMAIN_NAME=Default OS_PROJECT_DOMAIN_NAME=Default OS_IDENTITY_API_VERSION=3 \
    OS_REGION_NAME=RegionOne OS_INTERFACE=public
  wait_for 60 Keystone curl -sf "$KEYSTONE"
}

declare -A svc_pw=()
# Domains by id ("default"): Debian's openstackclient 6.0.0 fails to look one up by name
# ("Resource.get() takes 1 positional argument but 2 were given").
register() {  # register USER TYPE NAME URL: a service user (admin in project service) and its endpoints
  [[ -v svc_pw[$1] ]] || svc_pw[$1]=$(secret)
  openstack user create --domain default --password "${svc_pw[$1]}" "$1" -f value -c id >/dev/null
  openstack role add --project service --user "$1" admin
  openstack service create --name "$3" "$2" -f value -c id >/dev/null
  for iface in public internal admin; do
    openstack endpoint create --region RegionOne "$2" "$iface" "$4" -f value -c id >/dev/null
  done
}

# --- 4. Glance, Placement, Neutron, Nova ----------------------------------------------------------
start_glance() {
  local port url
  port=$(free_port) url=$(db glance glance "$(secret)")
  register glance image glance "http://127.0.0.1:$port"
  install -d -o glance -g glance "$W/glance" "$W/glance/images" "$W/glance/staging" "$W/glance/tasks" "$W/glance/lock"
  { cat <<INI
[DEFAULT]
bind_host = 127.0.0.1
bind_port = $port
workers = 1
enabled_backends = file:file
[glance_store]
default_backend = file
[file]
filesystem_store_datadir = $W/glance/images
[os_glance_staging_store]
filesystem_store_datadir = $W/glance/staging
[os_glance_tasks_store]
filesystem_store_datadir = $W/glance/tasks
[database]
connection = $url
[paste_deploy]
flavor = keystone
config_file = /etc/glance/glance-api-paste.ini
[oslo_concurrency]
lock_path = $W/glance/lock
INI
    authtoken glance "${svc_pw[glance]}"; } | conf "$W/etc/glance/glance-api.conf" glance
  as glance glance-manage --config-file "$W/etc/glance/glance-api.conf" db_sync >"$W/log/glance-manage.log" 2>&1
  daemon glance-api glance glance-api --config-file "$W/etc/glance/glance-api.conf"
  wait_for 60 Glance curl -sf "http://127.0.0.1:$port/versions"
}

start_placement() {
  local port url
  port=$(free_port) url=$(db placement placement "$(secret)")
  register placement placement placement "http://127.0.0.1:$port"
  { cat <<INI
[placement_database]
connection = $url
[api]
auth_strategy = keystone
INI
    authtoken placement "${svc_pw[placement]}"; } | conf "$W/etc/placement/placement.conf" placement
  as placement placement-manage --config-file "$W/etc/placement/placement.conf" db sync \
    >"$W/log/placement-manage.log" 2>&1
  uwsgi_app placement placement "$port" /usr/bin/placement-api "OS_PLACEMENT_CONFIG_DIR=$W/etc/placement"
  wait_for 60 Placement curl -sf "http://127.0.0.1:$port/"
}

start_neutron() {
  local port url
  port=$(free_port) url=$(db neutron neutron "$(secret)")
  register neutron network neutron "http://127.0.0.1:$port"
  install -d -o neutron -g neutron "$W/neutron" "$W/neutron/lock"
  { cat <<INI
[DEFAULT]
bind_host = 127.0.0.1
bind_port = $port
core_plugin = ml2
service_plugins = router
auth_strategy = keystone
api_workers = 1
rpc_workers = 1
rpc_state_report_workers = 0
transport_url = $TRANSPORT
state_path = $W/neutron
api_paste_config = /etc/neutron/api-paste.ini
notify_nova_on_port_status_changes = true
notify_nova_on_port_data_changes = true
[database]
connection = $url
[oslo_concurrency]
lock_path = $W/neutron/lock
INI
    service_auth nova nova "${svc_pw[nova]}" "region_name = RegionOne"
    cat <<INI
[ml2]
type_drivers = flat
tenant_network_types =
mechanism_drivers = openvswitch
[ml2_type_flat]
flat_networks = physnet1
INI
    authtoken neutron "${svc_pw[neutron]}"; } | conf "$W/etc/neutron/neutron.conf" neutron
  as neutron neutron-db-manage --config-file "$W/etc/neutron/neutron.conf" upgrade heads \
    >"$W/log/neutron-db-manage.log" 2>&1
  daemon neutron-server neutron neutron-server --config-file "$W/etc/neutron/neutron.conf"
  # Ready when a list of networks answers. That first query also configures SQLAlchemy's
  # mappers: Neutron 21's get_ports names Port.port_forwardings, a backref that exists only
  # once the router plugin's models are mapped, so a worker whose first request is a port list
  # answers 500 (and without service_plugins = router, every port list does).
  wait_for 90 Neutron openstack network list
}

# --- Open vSwitch and Neutron's OVS agent ------------------------------------------------------------
# OVS with the userspace datapath (datapath_type=netdev: no kernel module, which this host lacks).
# Its socket is OVS's default one, because libvirt (in hvagentd) runs plain `ovs-vsctl` to add a
# guest's tap to br-int. When an OVS already answers there (another test on this host), it is
# used as it is and only what this script added (bridges, a remote) is removed again.
ovs_vsctl() { ovs-vsctl --timeout=10 "$@"; }
ovs_ctl() {  # ovs_ctl NAME: the control socket of the running NAME (ovsdb-server, ovs-vswitchd)
  local c pid
  for c in "$OVS_RUN/$1".*.ctl; do
    pid=${c#"$OVS_RUN/$1."} pid=${pid%.ctl}
    [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && { echo "$c"; return 0; }
  done
  return 1
}
start_ovs() {
  install -d "$W/ovs" "$OVS_RUN"
  if ! ovs-vsctl --timeout=15 show >/dev/null 2>&1; then  # generous: a loaded host answers late
    ovsdb-tool create "$W/ovs/conf.db" /usr/share/openvswitch/vswitch.ovsschema
    daemon ovsdb-server root ovsdb-server --remote="punix:$OVS_RUN/db.sock" \
      --pidfile="$W/ovs/ovsdb-server.pid" "$W/ovs/conf.db"
    wait_for 30 ovsdb-server ovs-vsctl --timeout=3 --no-wait init
    daemon ovs-vswitchd root ovs-vswitchd --pidfile="$W/ovs/ovs-vswitchd.pid" "unix:$OVS_RUN/db.sock"
    wait_for 30 ovs-vswitchd ovs_ctl ovs-vswitchd
  else
    stamp "Open vSwitch already runs here: using it"
  fi
  local br
  for br in br-int br-phys; do
    ovs_vsctl br-exists "$br" || ovs_bridges+=("$br")
    ovs_vsctl --may-exist add-br "$br" -- set bridge "$br" datapath_type=netdev
  done
  # Neutron's agent (user neutron) talks to ovsdb-server over a socket of its own, group neutron,
  # instead of the TCP manager (ptcp:6640) it would otherwise ask root to open to every local user.
  ovs_remote="punix:$W/ovs/neutron.sock"
  ovs-appctl -t "$(ovs_ctl ovsdb-server)" ovsdb-server/add-remote "$ovs_remote"
  wait_for 10 "the neutron ovsdb socket" test -S "$W/ovs/neutron.sock"
  chown root:neutron "$W/ovs/neutron.sock"
  chmod 660 "$W/ovs/neutron.sock"
}
teardown_ovs() {  # what start_ovs added to an OVS that outlives this script (ours is gone already)
  [[ -f $W/run/ovsdb-server.pid ]] && return 0
  local br m
  for br in "${ovs_bridges[@]}"; do ovs-vsctl --timeout=5 --if-exists del-br "$br"; done
  [[ -n $ovs_remote ]] || return 0
  ovs-appctl -t "$(ovs_ctl ovsdb-server)" ovsdb-server/remove-remote "$ovs_remote"
  # Neutron's agent also records its connection as a Manager of the switch.
  for m in $(ovs-vsctl --timeout=5 --bare --columns=_uuid find Manager "target=\"$ovs_remote\""); do
    ovs-vsctl --timeout=5 remove Open_vSwitch . manager_options "$m"
  done
}

# The OVS agent runs as neutron. What it runs as root goes through Debian's sudoers line for
# neutron-rootwrap (ovs-ofctl, ip); its privsep daemons cannot: rootwrap's privsep filter
# accepts only config files under /etc and only the default context, and the agent uses others
# (link_cmd, ovs_vsctl_cmd, conntrack_cmd...). So a sudoers drop-in, made here and removed by the
# teardown as policy-rc.d is, lets neutron start privsep-helper with this run's two config files.
# Firewall: openvswitch (OVS's own conntrack, which the userspace datapath implements), not
# iptables_hybrid: that needs a Linux bridge per port with br_netfilter, and ports would then be
# bound with ovs_hybrid_plug.
start_neutron_agent() {
  local cfgs="--config-file $W/etc/neutron/neutron.conf --config-file $W/etc/neutron/openvswitch_agent.ini"
  local section helper="sudo privsep-helper $cfgs"
  sudoers=/etc/sudoers.d/hvos-neutron-privsep
  printf 'neutron ALL = (root) NOPASSWD: /usr/bin/privsep-helper %s *\n' "$cfgs" >"$sudoers.tmp"
  chmod 440 "$sudoers.tmp"
  visudo -cqf "$sudoers.tmp"
  mv "$sudoers.tmp" "$sudoers"
  { cat <<INI
[agent]
root_helper = sudo neutron-rootwrap /etc/neutron/rootwrap.conf
tunnel_types =
[ovs]
integration_bridge = br-int
bridge_mappings = physnet1:br-phys
datapath_type = netdev
ovsdb_connection = unix:$W/ovs/neutron.sock
of_listen_address = 127.0.0.1
of_listen_port = $(free_port)
[securitygroup]
firewall_driver = openvswitch
enable_security_group = true
INI
    for section in privsep privsep_link privsep_ovs_vsctl privsep_conntrack privsep_namespace \
                   privsep_dhcp_release; do
      printf '[%s]\nhelper_command = %s\n' "$section" "$helper"
    done
  } | conf "$W/etc/neutron/openvswitch_agent.ini" neutron
  # shellcheck disable=SC2086 # $cfgs: the four words of the two --config-file options
  daemon neutron-openvswitch-agent neutron neutron-openvswitch-agent $cfgs
  wait_for 120 "Neutron's Open vSwitch agent" ovs_agent_alive
}
ovs_agent_alive() {
  openstack network agent list --agent-type open-vswitch -f value -c Alive | grep -qx True
}

start_agent() {
  local grpc rest
  grpc=$(free_port) rest=$(free_port)
  AGENT_GRPC=127.0.0.1:$grpc
  "$repo/deploy/dev-certs.sh" "$W/pki" >/dev/null 2>&1
  truncate -s 8G "$W/pool.img"  # sparse: the root (2 GiB after the resize), its snapshot copy, the image
  loop=$(losetup --find --show --partscan "$W/pool.img")
  mkdir -p "$W/libvirt/etc" "$W/agent/state" "$W/agent/console"
  # libvirt's embedded QEMU driver: its own domains, state and run directories inside $W, so no
  # other libvirtd on this shared host is touched. Guests run as root with no security driver,
  # as the integration tier's libvirtd runs them (no AppArmor policy, no /dev/kvm here).
  printf 'user = "root"\ngroup = "root"\nsecurity_driver = "none"\ndynamic_ownership = 0\nstdio_handler = "file"\n' \
    >"$W/libvirt/etc/qemu.conf"
  cat >"$W/agent/hvagent.toml" <<TOML
[hypervisor]
uri = "qemu:///embed?root=$W/libvirt"
domain_type = "qemu"
[grpc]
listen = "$AGENT_GRPC"
[rest]
listen = "127.0.0.1:$rest"
[tls]
cert_file = "$W/pki/server.crt"
key_file = "$W/pki/server.key"
client_ca_file = "$W/pki/ca.crt"
[[auth.identities]]
name = "hvagent-controller"
role = "controller"
[reliability]
state_dir = "$W/agent/state"
[console]
log_dir = "$W/agent/console"
[network]
ovs_bridges = ["br-int"]
bridges = []
[[storage.pools]]
name = "nova"
type = "partition"
disk = "$loop"
wipe = "none"
TOML
  daemon hvagentd root /usr/sbin/hvagentd --config "$W/agent/hvagent.toml"
  HVCTL=(/usr/bin/hvctl --server "$AGENT_GRPC" --ca "$W/pki/ca.crt" --cert "$W/pki/controller.crt"
         --key "$W/pki/controller.key")
  wait_for 90 hvagentd "${HVCTL[@]}" pools
}

nova_conf() {  # the one nova.conf every Nova service reads
  local api_url=$1 cell0_url=$2 nova_url=$3 port=$4
  mkdir -p "$W/etc/nova/hvagent"
  cp "$W/pki/ca.crt" "$W/pki/controller.crt" "$W/pki/controller.key" "$W/etc/nova/hvagent/"
  chown -R root:nova "$W/etc/nova/hvagent"
  chmod 640 "$W/etc/nova/hvagent/"*
  install -d -o nova -g nova "$W/nova" "$W/nova/instances" "$W/nova/lock"
  { cat <<INI
[DEFAULT]
transport_url = $TRANSPORT
my_ip = 127.0.0.1
state_path = $W/nova
instances_path = $W/nova/instances
enabled_apis = osapi_compute
osapi_compute_listen = 127.0.0.1
osapi_compute_listen_port = $port
osapi_compute_workers = 1
api_paste_config = /etc/nova/api-paste.ini
compute_driver = hvagent.HvagentDriver
allow_resize_to_same_host = true
# Real port binding: a guest starts only once Neutron's OVS agent has wired its port on br-int
# and Neutron sent network-vif-plugged; no event in this time fails the boot.
vif_plugging_is_fatal = true
vif_plugging_timeout = 120
# The busybox guest runs no ACPI daemon: a clean shutdown (stop, resize) is forced after this
# instead of Nova's 60 s.
shutdown_timeout = 5
[api]
auth_strategy = keystone
[api_database]
connection = $api_url
[database]
connection = $nova_url
[conductor]
workers = 1
[scheduler]
workers = 1
discover_hosts_in_cells_interval = -1
[oslo_concurrency]
lock_path = $W/nova/lock
INI
    service_auth placement placement "${svc_pw[placement]}" "region_name = RegionOne"
    service_auth neutron neutron "${svc_pw[neutron]}" "region_name = RegionOne"
    service_auth service_user nova "${svc_pw[nova]}" "send_service_user_token = true"
    cat <<INI
[glance]
region_name = RegionOne
[libvirt]
# A soft reboot asks the guest to power off and waits this long before rebooting it hard; the
# busybox guest ignores ACPI, so Nova's 120 s would be spent waiting every time.
wait_soft_reboot_seconds = 5
[hvagent]
address = $AGENT_GRPC
ca_file = $W/etc/nova/hvagent/ca.crt
cert_file = $W/etc/nova/hvagent/controller.crt
key_file = $W/etc/nova/hvagent/controller.key
tls_server_name = localhost
storage_pool = nova
INI
    authtoken nova "${svc_pw[nova]}"; } | conf "$W/etc/nova/nova.conf" nova
}

start_nova() {
  local port api_url cell0_url nova_url pw
  port=$(free_port) pw=$(secret)
  api_url=$(db nova_api nova "$pw") cell0_url=$(db nova_cell0 nova "$pw") nova_url=$(db nova nova "$pw")
  register nova compute nova "http://127.0.0.1:$port/v2.1"
  nova_conf "$api_url" "$cell0_url" "$nova_url" "$port"
  local nm=(nova-manage --config-file "$W/etc/nova/nova.conf")
  {
    as nova "${nm[@]}" api_db sync
    as nova "${nm[@]}" cell_v2 map_cell0 --database_connection "$cell0_url"
    as nova "${nm[@]}" cell_v2 create_cell --name cell1
    as nova "${nm[@]}" db sync
  } >"$W/log/nova-manage.log" 2>&1
  local c=(--config-file "$W/etc/nova/nova.conf")
  daemon nova-api nova nova-api "${c[@]}"
  daemon nova-conductor nova nova-conductor "${c[@]}"
  daemon nova-scheduler nova nova-scheduler "${c[@]}"
  daemon nova-compute nova nova-compute "${c[@]}"
  wait_for 90 nova-api curl -sf "http://127.0.0.1:$port/"
  # The compute service registers itself; then cell1 learns of its host.
  wait_for 120 nova-compute openstack compute service list --service nova-compute -f value -c State
  wait_for 60 "nova-compute in cell1" discover
  wait_for 120 "the hypervisor in placement" has_hypervisor
}
discover() {
  as nova nova-manage --config-file "$W/etc/nova/nova.conf" cell_v2 discover_hosts >/dev/null &&
    openstack hypervisor list -f value -c 'Hypervisor Hostname' | grep -q .
}
has_hypervisor() { openstack resource provider list -f value -c name | grep -q .; }

peak_rss() {  # prints the sum of RSS (MiB) of every process we started and their children
  local total=0 pid kids
  for pid in "${pids[@]}"; do
    kids=$(pgrep -s "$pid" 2>/dev/null || true)
    for k in $kids; do
      total=$((total + $(awk '/^VmRSS/{print $2}' "/proc/$k/status" 2>/dev/null || echo 0)))
    done
  done
  echo $((total / 1024))
}

# --- run ------------------------------------------------------------------------------------------
install_packages
stamp "packages in place (${took[install]} s)"
t=$SECONDS
start_mariadb
start_rabbitmq
start_keystone
openstack project create --domain default service -f value -c id >/dev/null
svc_pw[nova]=$(secret)  # Neutron's [nova] section names it before Nova is registered
start_glance
start_placement
start_neutron
tn=$SECONDS
start_ovs
start_neutron_agent
took[network]=$((SECONDS - tn))
stamp "Open vSwitch and Neutron's OVS agent up (${took[network]} s)"
start_agent
start_nova
took[services]=$((SECONDS - t))
stamp "cloud up (${took[services]} s), services' RSS now $(peak_rss) MiB"

t=$SECONDS
rc=0
export HVOS_HVCTL="${HVCTL[*]}" HVOS_GUEST_DIR=${HVAGENT_GUEST_DIR:-/var/cache/hvagent-test/guest} \
  HVOS_WORK=$W HVOS_RSS_PIDS="${pids[*]}"
/usr/bin/python3 -m unittest -v "$here/test_openstack.py" 2>&1 | tee "$W/log/test.log" || rc=${PIPESTATUS[0]}
took[test]=$((SECONDS - t))
peak=$(sed -n 's/^services peak RSS: \([0-9]*\) MiB$/\1/p' "$W/log/test.log" | tail -n 1)
stamp "times: install ${took[install]} s, services ${took[services]} s (OVS and its Neutron agent ${took[network]} s), test ${took[test]} s; services' peak RSS ${peak:-?} MiB"
exit "$rc"
