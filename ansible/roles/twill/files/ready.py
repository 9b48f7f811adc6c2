#!/usr/bin/python3
"""ready.py: waits until this node's twilld is ready, in one run on the node.

Ready means: the twilld unit is active (Type=notify: twilld says so once it
holds its lease and has set up the data path), the subnet file is there, etcd
lists the lease of the subnet in it (twillctl leases, with twilld's own
settings), and /readyz answers 200 when a URL is given. Prints what it found;
exits 1 with the reason once --timeout seconds have passed.
"""
import argparse
import ipaddress
import json
import os
import subprocess
import sys
import time
import urllib.request


def env_file(path):
    env = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                k, v = line.split("=", 1)
                env[k] = v
    return env


def check(args, env):
    """Returns None when ready, else why not."""
    state = subprocess.run(["systemctl", "is-active", "twilld"], capture_output=True, text=True).stdout.strip()
    if state != "active":
        return "twilld is %s" % (state or "unknown")
    try:
        subnet_env = env_file(args.subnet_file)
    except OSError as e:
        return "no subnet file: %s" % e
    gw = subnet_env.get("TWILL_SUBNET", "")
    try:
        own = ipaddress.ip_interface(gw).network
    except ValueError:
        return "the subnet file has no TWILL_SUBNET: %r" % gw
    out = subprocess.run(["/usr/local/bin/twillctl", "leases", "-o", "json"], capture_output=True, text=True,
                         env=dict(os.environ, **env), timeout=30)
    if out.returncode != 0:
        return "twillctl leases: %s" % (out.stderr.strip() or out.returncode)
    subnets = [ls.get("Subnet") for ls in json.loads(out.stdout or "[]")]
    if str(own) not in subnets:
        return "the subnet file names %s, which etcd does not list (%s)" % (own, ", ".join(map(str, subnets)))
    if args.readyz:
        try:
            with urllib.request.urlopen(args.readyz, timeout=5) as r:
                if r.status != 200:
                    return "%s answered %d" % (args.readyz, r.status)
        except Exception as e:  # an HTTP error status or no answer
            return "%s: %s" % (args.readyz, e)
    return None


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--env", required=True)
    p.add_argument("--subnet-file", required=True)
    p.add_argument("--readyz", default="")
    p.add_argument("--timeout", type=float, default=120)
    args = p.parse_args()
    env = env_file(args.env)
    deadline = time.monotonic() + args.timeout
    while True:
        why = check(args, env)
        if why is None:
            print("ready: twilld active, subnet file %s, its lease in etcd%s" % (
                args.subnet_file, ", " + args.readyz + " 200" if args.readyz else ""))
            return 0
        if time.monotonic() > deadline:
            print("not ready after %gs: %s" % (args.timeout, why), file=sys.stderr)
            return 1
        time.sleep(1)


if __name__ == "__main__":
    sys.exit(main())
