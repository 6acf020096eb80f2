#!/bin/bash
# A whole user data that is a script: runs once per instance.
set -e
echo "node $public_ipv4 is up" > /var/log/script-ran
