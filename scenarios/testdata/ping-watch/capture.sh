#!/bin/sh
# Records the ping output of TestParsePingWatchRecorded: a real ping, run
# as a ping watch runs it (watch.go), from one network namespace to another
# over a veth, with echo requests dropped by nftables in the target for a
# while. The end step is played as ping-watch-end plays it: SIGQUIT (ping
# prints how many requests it has sent), the drain (0.5 s), SIGINT.
#   sudo sh capture.sh loss-before-end  > loss-before-end.txt
# Cases:
#   loss-before-end  the drop starts, about 30 requests are dropped, the end
#                    step comes; the drop goes on to the end
#   loss-after-end   the drop starts at the end step
#   healed-in-drain  about 30 requests are dropped, the end step comes and
#                    the drop stops with it: replies come again in the drain
#   loss-from-start  about 30 requests are dropped from the first, then the
#                    drop stops; 1 s later the end step
#   clean            no drop
#   unreachable      as loss-before-end, but the target answers the
#                    requests with ICMP host unreachable instead of
#                    dropping them (as a node without a route does); with
#                    -w ping would end at the first error, with -c it goes
#                    on
set -eu
case=$1
p=twpw$$
a=${p}a b=${p}b
cleanup() { ip netns del $a 2>/dev/null || true; ip netns del $b 2>/dev/null || true; }
trap cleanup EXIT
ip netns add $a
ip netns add $b
ip link add ${p}x netns $a type veth peer name ${p}y netns $b
ip -n $a addr add 10.244.250.1/30 dev ${p}x
ip -n $b addr add 10.244.250.2/30 dev ${p}y
ip -n $a link set ${p}x up
ip -n $b link set ${p}y up
ip netns exec $b nft add table inet pw
ip netns exec $b nft add chain inet pw in '{ type filter hook input priority 0; }'
drop() { ip netns exec $b nft add rule inet pw in icmp type echo-request counter drop; }
reject() { ip netns exec $b nft add rule inet pw in icmp type echo-request counter reject with icmp type host-unreachable; }
heal() { ip netns exec $b nft flush chain inet pw in; }
dropped() { ip netns exec $b nft list chain inet pw in | sed -n 's/.*counter packets \([0-9]*\).*/\1/p'; }
out=$(mktemp)
[ "$case" = loss-from-start ] && drop
ip netns exec $a sh -c 'exec /bin/ping -n -D -i 0.01 -c 60000 10.244.250.2' >"$out" 2>&1 &
pid=$!
case $case in
loss-from-start)
	while [ "$(dropped)" -lt 30 ]; do sleep 0.002; done
	heal
	sleep 1
	;;
*) sleep 2 ;;
esac
case $case in
loss-before-end | healed-in-drain)
	drop
	while [ "$(dropped)" -lt 30 ]; do sleep 0.002; done
	;;
unreachable)
	reject
	while [ "$(dropped)" -lt 30 ]; do sleep 0.002; done
	;;
esac
kill -QUIT $pid # the end step
case $case in
loss-after-end) drop ;;
healed-in-drain) heal ;;
esac
sleep 0.5 # watchDrain
kill -INT $pid
wait $pid || true
cat "$out"
rm -f "$out"
