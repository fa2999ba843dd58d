#!/bin/sh
# hello 1.0.0, step "system info": print facts about the machine the agent runs on.
# POSIX sh on purpose; every command is optional, so a minimal system still succeeds.

section() { printf '\n== %s ==\n' "$1"; }
try() { "$@" 2>/dev/null || echo "($1 not available)"; }

section "kernel"
try uname -a
section "operating system"
if [ -r /etc/os-release ]; then
    grep -E '^(PRETTY_NAME|VERSION_ID)=' /etc/os-release
else
    echo "(no /etc/os-release)"
fi
section "user"
try id
section "uptime"
try uptime
section "disk space of the working directory"
try df -h .
section "memory"
if [ -r /proc/meminfo ]; then
    grep -E '^(MemTotal|MemAvailable):' /proc/meminfo
else
    echo "(no /proc/meminfo)"
fi
section "environment given by the agent"
env | grep '^TIANGONG_' | grep -v '^TIANGONG_SECRET_' | sort
exit 0
