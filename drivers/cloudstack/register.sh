#!/usr/bin/env bash
# Registers hvagent-cloudstack with Apache CloudStack (4.21+) through cmk (CloudMonkey), the way
# the extension needs it:
#   - the extension, type Orchestrator, Enabled, with orchestratorrequirespreparevm=true: without
#     it CloudStack never sends `prepare`, so the checks it makes and the details it has
#     CloudStack persist (the domain name) are lost;
#   - every custom action, created enabled (CloudStack's default is disabled) and with a timeout
#     (its default is 5 s, shorter than most agent calls), on the resource type it acts on;
#   - optionally, the extension registered with a cluster.
# By default it only prints the cmk commands, one per line, quoted for a shell; --run runs them
# (argv, no shell). docs/cloudstack.md, "Registering it".
#
#   register.sh [--run] [--cmk PATH] [--name NAME] [--path RELATIVE_PATH]
#               [--extension-id UUID] [--cluster-id UUID] [--detail KEY=VALUE]...
#
# --extension-id: the extension exists already; only its custom actions (and the cluster) are
# added. --detail: an extension detail (shared by all hosts), e.g. vlan_bridge_format=br{vlan}.
set -euo pipefail

usage() {
  echo "usage: register.sh [--run] [--cmk PATH] [--name NAME] [--path RELATIVE_PATH]" \
       "[--extension-id UUID] [--cluster-id UUID] [--detail KEY=VALUE]..." >&2
  exit 2
}
die() { echo "register.sh: $*" >&2; exit 2; }

run=0 cmk=cmk name=hvagent path=hvagent-cloudstack extension_id="" cluster_id=""
details=()
while (($#)); do
  case $1 in
    --run) run=1; shift ;;
    --cmk) (($# >= 2)) || usage; cmk=$2; shift 2 ;;
    --name) (($# >= 2)) || usage; name=$2; shift 2 ;;
    --path) (($# >= 2)) || usage; path=$2; shift 2 ;;
    --extension-id) (($# >= 2)) || usage; extension_id=$2; shift 2 ;;
    --cluster-id) (($# >= 2)) || usage; cluster_id=$2; shift 2 ;;
    --detail) (($# >= 2)) || usage; details+=("$2"); shift 2 ;;
    -h | --help) usage ;;
    *) echo "register.sh: unknown argument '$1'" >&2; usage ;;
  esac
done

# Everything from argv is checked before any command is printed or run.
uuid_re='^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$'
[[ $name =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$ ]] || die "--name '$name': 1-64 of A-Za-z0-9._-"
[[ $path =~ ^[A-Za-z0-9][A-Za-z0-9._/-]{0,254}$ && $path != *..* ]] ||
  die "--path '$path': a path relative to the extensions directory, without '..'"
[[ -z $extension_id || $extension_id =~ $uuid_re ]] || die "--extension-id '$extension_id': not a UUID"
[[ -z $cluster_id || $cluster_id =~ $uuid_re ]] || die "--cluster-id '$cluster_id': not a UUID"
for d in "${details[@]}"; do
  [[ $d =~ ^[A-Za-z0-9_.]{1,64}=[^[:cntrl:]]{0,1024}$ ]] || die "--detail '$d': KEY=VALUE, KEY of A-Za-z0-9_."
done

# The custom actions: name, resource type, timeout (s), roles allowed, parameters
# (name:TYPE:required, comma-separated), description. Each one's own deadline inside the
# extension is the timeout less 5 s (main.cpp).
actions=(
  "hostcapacity|Host|30|Admin||The agent's capacity figures and the policy it admits VMs by"
  "eventchannels|Host|30|Admin||Xen event-channel use of each domain against its limit"
  "resizevolume|VirtualMachine|120|Admin|pool:STRING:false,volume:STRING:false,size_gb:INTEGER:true|Grow a volume of an agent pool (default: the VM's root volume)"
  "suspend|VirtualMachine|60|Admin,DomainAdmin,User||Pause the VM in memory"
  "resume|VirtualMachine|60|Admin,DomainAdmin,User||Continue a paused VM"
  "reinstall|VirtualMachine|900|Admin||Rebuild the stopped VM's root volume from its template's image (the old one is deleted once the new one is in place)"
  "importimage|Host|3600|Admin|image_url:STRING:true,image_checksum:STRING:true,image_format:STRING:false,pool:STRING:false|Import a template's image onto the host now, so that its first VMs need not wait (the name create derives from the checksum)"
  "createtemplate|VirtualMachine|3600|Admin|name:STRING:true,pool:STRING:false,snapshot:STRING:false|Make an image of the host's pool from the VM's root volume, or from one of its snapshots (a running VM is paused for a copy of the volume only); its template_detail names it in a new template"
  "createsnapshot|VirtualMachine|300|Admin,DomainAdmin,User|name:STRING:true,pool:STRING:false|Snapshot the VM's root volume (LVM pools; a running VM is frozen through its guest agent, or paused, for the snapshot only)"
  "listsnapshots|VirtualMachine|60|Admin,DomainAdmin,User|pool:STRING:false|The snapshots of the VM's root volume"
  "revertsnapshot|VirtualMachine|300|Admin,DomainAdmin,User|name:STRING:true,pool:STRING:false|Revert the stopped VM's root volume to a snapshot (a classic snapshot on a thick pool is consumed)"
  "deletesnapshot|VirtualMachine|120|Admin,DomainAdmin,User|name:STRING:true,pool:STRING:false|Delete a snapshot of the VM's root volume"
)

placeholder="@EXTENSION_ID@"  # printed in place of the id createExtension returns

emit() {  # emit ARG...: print (quoted) or run one cmk command
  if ((run)); then
    "$cmk" "$@" >/dev/null
  else
    local out
    printf -v out '%q ' "$cmk" "$@"
    echo "${out% }"
  fi
}

if [[ -z $extension_id ]]; then
  args=(createExtension "name=$name" type=Orchestrator "path=$path" orchestratorrequirespreparevm=true
        state=Enabled "description=hvagent: VMs on ARM64 Xen/KVM hosts through each host's hvagentd")
  i=0
  for d in "${details[@]}"; do
    args+=("details[$i].${d%%=*}=${d#*=}")  # the API's documented form: details[i].keyname=keyvalue
    i=$((i + 1))
  done
  if ((run)); then
    out=$("$cmk" -o json "${args[@]}") || die "createExtension failed: $out"
    # The extension object's own id is the first "id" of the response.
    extension_id=$(grep -oE '"id" *: *"[0-9a-fA-F-]{36}"' <<<"$out" | head -n1 | grep -oE '[0-9a-fA-F-]{36}') ||
      die "createExtension answered no extension id: $out"
  else
    emit "${args[@]}"
    extension_id=$placeholder
  fi
elif ((${#details[@]})); then
  die "--detail is for a new extension; update an existing one with cmk updateExtension"
fi

for a in "${actions[@]}"; do
  IFS='|' read -r aname rtype timeout roles params desc <<<"$a"
  args=(addCustomAction "extensionid=$extension_id" "name=$aname" "resourcetype=$rtype" enabled=true
        "timeout=$timeout" "allowedroletypes=$roles" "description=$desc")
  i=0
  IFS=',' read -r -a plist <<<"$params"
  for p in "${plist[@]}"; do
    IFS=':' read -r pname ptype preq <<<"$p"
    args+=("parameters[$i].name=$pname" "parameters[$i].type=$ptype" "parameters[$i].required=$preq")
    i=$((i + 1))
  done
  emit "${args[@]}"
done

if [[ -n $cluster_id ]]; then
  emit registerExtension "extensionid=$extension_id" "resourceid=$cluster_id" resourcetype=Cluster
fi
