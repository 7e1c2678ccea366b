# What a model's launcher becomes once the template has forked the model's server (launcher.py execs it).
#
# MMS watches the process it started for each model for as long as the model is loaded, one per
# resident model; as a Python it held about 3 MB of private memory, as this shell about 0.2 MB.
# It does what the launcher did while it waited: forwards SIGTERM and SIGINT to the server's process
# group, and exits with the server's status when the template writes "exit <status>" on the
# connection (fd 3); if the template goes away first (the connection ends), it exits 1. If MMS kills
# it, the template sees the connection end and kills the server.
#
# $1: the server's process group; the rest: MMS's own arguments, kept so that the command line
# still names the model (--model-name), as the watchdog and `processes.model_of` read it.
group=$1
trap 'kill -TERM -$group 2>/dev/null; signalled=1' TERM
trap 'kill -INT -$group 2>/dev/null; signalled=1' INT
while :; do
  signalled=
  if read -r word status <&3; then
    [ "$word" = exit ] && exit "$status"
  elif [ -z "$signalled" ]; then
    exit 1
  fi
done
