#!/bin/bash
# Healthy: Prometheus answers /-/ready with 200 (bash's /dev/tcp: the image
# has no curl).
exec 3<>/dev/tcp/127.0.0.1/9090 || exit 1
printf 'GET /-/ready HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
read -r -t 4 status <&3 || exit 1
case "$status" in "HTTP/1."[01]" 200"*) exit 0 ;; *) exit 1 ;; esac
