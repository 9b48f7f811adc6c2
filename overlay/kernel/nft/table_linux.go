//go:build linux

package nft

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/bits"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
)

// Names inside the twill table.
const (
	setTx           = "peers-tx"
	setRx           = "peers-rx"
	setSources      = "tunnel-sources"
	chainForward    = "forward"
	chainInput      = "input"
	chainOutput     = "output"
	chainPostroute  = "postrouting"
	elementsPerCall = 512 // keeps one NEWSETELEM message well under netlink's 64 KiB attribute limit
)

// IP header offsets of the source and destination addresses.
const (
	offSaddr = 12
	offDaddr = 16
)

var multicast = netip.MustParsePrefix("224.0.0.0/4")

// setIDs serialises queueing sets across Tables: github.com/google/nftables
// (v0.3.0, Conn.AddSet) numbers new sets from a package variable without a
// lock, so two Tables in one process (one per namespace, in tests) must not
// add sets at the same time.
var setIDs sync.Mutex

// Table is the twill nftables table in one network namespace. Its methods may
// be called from several goroutines; they run one at a time.
type Table struct {
	log   *slog.Logger
	netns int
	mu    sync.Mutex
}

// Option configures a Table.
type Option func(*Table)

// InNetNS makes the Table work in the network namespace that the open file
// descriptor fd refers to (e.g. /run/netns/NAME, or /proc/PID/ns/net). The
// caller keeps fd open while the Table is in use. Without it the Table works in
// the network namespace of the calling thread.
func InNetNS(fd int) Option {
	return func(t *Table) { t.netns = fd }
}

// New returns the twill table. It does nothing to the kernel until Apply.
func New(log *slog.Logger, opts ...Option) *Table {
	t := &Table{log: log}
	for _, o := range opts {
		o(t)
	}
	return t
}

func (t *Table) conn() (*nftables.Conn, error) {
	opts := []nftables.ConnOption{nftables.AsLasting()}
	if t.netns > 0 {
		opts = append(opts, nftables.WithNetNSFd(t.netns))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("open nftables netlink connection: %w", err)
	}
	return c, nil
}

func twillTable() *nftables.Table {
	return &nftables.Table{Name: TableName, Family: nftables.TableFamilyIPv4}
}

// ruleSpec is one desired rule; its comment, the rule in nft syntax, is how
// Apply recognises it when it reads the chain back.
type ruleSpec struct {
	comment string
	exprs   []expr.Any
}

// chainSpec is one desired base chain.
type chainSpec struct {
	name     string
	typ      nftables.ChainType
	hook     *nftables.ChainHook
	priority *nftables.ChainPriority
	rules    []ruleSpec
}

func desiredChains(r Rules) []chainSpec {
	chains := []chainSpec{
		{
			name: chainForward, typ: nftables.ChainTypeFilter,
			hook: nftables.ChainHookForward, priority: nftables.ChainPriorityFilter,
			rules: []ruleSpec{
				lookupRule(offDaddr, setTx),
				lookupRule(offSaddr, setRx),
				prefixRule([]match{{offSaddr, r.ClusterNetwork, false}}, &expr.Verdict{Kind: expr.VerdictAccept}, "accept"),
				prefixRule([]match{{offDaddr, r.ClusterNetwork, false}}, &expr.Verdict{Kind: expr.VerdictAccept}, "accept"),
			},
		},
		{
			name: chainOutput, typ: nftables.ChainTypeFilter,
			hook: nftables.ChainHookOutput, priority: nftables.ChainPriorityFilter,
			rules: []ruleSpec{lookupRule(offDaddr, setTx)},
		},
		{
			name: chainInput, typ: nftables.ChainTypeFilter,
			hook: nftables.ChainHookInput, priority: nftables.ChainPriorityFilter,
			rules: append(tunnelRules(r.Tunnel), lookupRule(offSaddr, setRx)),
		},
	}
	if r.Masquerade {
		ret := func() expr.Any { return &expr.Verdict{Kind: expr.VerdictReturn} }
		masq := func() expr.Any { return &expr.Masq{FullyRandom: true} }
		cn, sub := r.ClusterNetwork, r.NodeSubnet
		chains = append(chains, chainSpec{
			name: chainPostroute, typ: nftables.ChainTypeNAT,
			hook: nftables.ChainHookPostrouting, priority: nftables.ChainPriorityNATSource,
			rules: []ruleSpec{
				prefixRule([]match{{offSaddr, cn, false}, {offDaddr, cn, false}}, ret(), "return"),
				prefixRule([]match{{offSaddr, cn, false}, {offDaddr, multicast, true}}, masq(), "masquerade fully-random"),
				prefixRule([]match{{offSaddr, cn, true}, {offDaddr, sub, false}}, ret(), "return"),
				prefixRule([]match{{offSaddr, cn, true}, {offDaddr, cn, false}}, masq(), "masquerade fully-random"),
			},
		})
	}
	return chains
}

// match is "ip saddr|daddr [!=] prefix".
type match struct {
	offset uint32
	prefix netip.Prefix
	negate bool
}

func fieldName(offset uint32) string {
	if offset == offSaddr {
		return "ip saddr"
	}
	return "ip daddr"
}

func prefixRule(ms []match, verdict expr.Any, verdictText string) ruleSpec {
	var exprs []expr.Any
	var text []string
	for _, m := range ms {
		mask := prefixMask(m.prefix.Bits())
		addr := m.prefix.Addr().As4()
		op, opText := expr.CmpOpEq, ""
		if m.negate {
			op, opText = expr.CmpOpNeq, "!= "
		}
		exprs = append(exprs,
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: m.offset, Len: 4},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask[:], Xor: []byte{0, 0, 0, 0}},
			&expr.Cmp{Op: op, Register: 1, Data: addr[:]},
		)
		text = append(text, fmt.Sprintf("%s %s%s", fieldName(m.offset), opText, m.prefix))
	}
	exprs = append(exprs, verdict)
	text = append(text, verdictText)
	return ruleSpec{comment: strings.Join(text, " "), exprs: exprs}
}

func lookupRule(offset uint32, set string) ruleSpec {
	return ruleSpec{
		comment: fmt.Sprintf("%s @%s", fieldName(offset), set),
		exprs: []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
			&expr.Lookup{SourceRegister: 1, SetName: set},
		},
	}
}

// tunnelRules are the guard's two rules: drop (and count) encapsulated
// packets from sources that are not peers, count the others per source.
func tunnelRules(t *Tunnel) []ruleSpec {
	if t == nil {
		return nil
	}
	var match []expr.Any
	var text string
	if t.Proto == ProtoIPIP {
		match = []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 9, Len: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{ProtoIPIP}},
		}
		text = "ip protocol ipip"
	} else {
		match = []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{ProtoUDP}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.BigEndian.AppendUint16(nil, t.Port)},
		}
		text = fmt.Sprintf("udp dport %d", t.Port)
	}
	source := &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offSaddr, Len: 4}
	drop := append(slices.Clone(match), source,
		&expr.Lookup{SourceRegister: 1, SetName: setSources, Invert: true},
		&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop})
	count := append(slices.Clone(match), source, &expr.Lookup{SourceRegister: 1, SetName: setSources})
	return []ruleSpec{
		{comment: text + " ip saddr != @" + setSources + " " + dropComment, exprs: drop},
		{comment: text + " ip saddr @" + setSources, exprs: count},
	}
}

// dropComment ends the comment of the guard's drop rule, whose counter is
// the count of dropped packets.
const dropComment = "counter drop"

func prefixMask(n int) [4]byte {
	var m [4]byte
	binary.BigEndian.PutUint32(m[:], ^uint32(0)<<(32-n)) // a shift by 32 yields 0 in Go
	return m
}

func newPeerSet(tbl *nftables.Table, name string) *nftables.Set {
	return &nftables.Set{
		Table:    tbl,
		Name:     name,
		KeyType:  nftables.TypeIPAddr,
		Interval: true,
		Counter:  true,
	}
}

// state is what the kernel has in the twill table.
type state struct {
	table    bool
	chains   map[string]*nftables.Chain
	comments map[string][]string // base chain name -> its rules' comments, in order
	sets     map[string]*nftables.Set
	elements map[string]map[netip.Prefix]PeerCounters // set name -> prefix -> counter (Tx used)
	sources  map[netip.Addr]Counter                   // elements of tunnel-sources
}

func tableExists(c *nftables.Conn) (bool, error) {
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return false, fmt.Errorf("list nftables tables: %w", err)
	}
	for _, tb := range tables {
		if tb.Name == TableName {
			return true, nil
		}
	}
	return false, nil
}

func readState(c *nftables.Conn) (*state, error) {
	st := &state{
		chains:   map[string]*nftables.Chain{},
		comments: map[string][]string{},
		sets:     map[string]*nftables.Set{},
		elements: map[string]map[netip.Prefix]PeerCounters{},
	}
	var err error
	if st.table, err = tableExists(c); err != nil || !st.table {
		return st, err
	}
	tbl := twillTable()
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return nil, fmt.Errorf("list chains: %w", err)
	}
	for _, ch := range chains {
		if ch.Table.Name != TableName {
			continue
		}
		st.chains[ch.Name] = ch
		rules, err := c.GetRules(tbl, ch)
		if err != nil {
			return nil, fmt.Errorf("list rules of chain %s: %w", ch.Name, err)
		}
		for _, r := range rules {
			comment, _ := userdata.GetString(r.UserData, userdata.TypeComment)
			st.comments[ch.Name] = append(st.comments[ch.Name], comment)
		}
	}
	sets, err := c.GetSets(tbl)
	if err != nil {
		return nil, fmt.Errorf("list sets: %w", err)
	}
	for _, s := range sets {
		st.sets[s.Name] = s
		if s.Name == setSources {
			elems, err := c.GetSetElements(s)
			if err != nil {
				return nil, fmt.Errorf("list elements of set %s: %w", s.Name, err)
			}
			st.sources = addresses(elems)
			continue
		}
		if s.Name != setTx && s.Name != setRx {
			continue
		}
		elems, err := c.GetSetElements(s)
		if err != nil {
			return nil, fmt.Errorf("list elements of set %s: %w", s.Name, err)
		}
		st.elements[s.Name] = intervals(elems)
	}
	return st, nil
}

// intervals turns the elements of an interval set back into prefixes, each
// with the counter of its start element (in Tx). Ranges that are not a
// prefix are left out: twill never adds them.
func intervals(elems []nftables.SetElement) map[netip.Prefix]PeerCounters {
	var starts []nftables.SetElement
	var ends []uint64
	for _, e := range elems {
		if len(e.Key) != 4 {
			continue
		}
		if e.IntervalEnd {
			ends = append(ends, uint64(binary.BigEndian.Uint32(e.Key)))
		} else {
			starts = append(starts, e)
		}
	}
	slices.Sort(ends)
	out := make(map[netip.Prefix]PeerCounters, len(starts))
	for _, s := range starts {
		lo := uint64(binary.BigEndian.Uint32(s.Key))
		hi := uint64(1) << 32 // a range to the top of the address space has no end element
		if i, _ := slices.BinarySearch(ends, lo+1); i < len(ends) {
			hi = ends[i]
		}
		size := hi - lo
		if size == 0 || size&(size-1) != 0 || lo&(size-1) != 0 {
			continue
		}
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte(s.Key)), 32-bits.TrailingZeros64(size))
		var pc PeerCounters
		if s.Counter != nil {
			pc.Tx = Counter{Packets: s.Counter.Packets, Bytes: s.Counter.Bytes}
		}
		out[p] = pc
	}
	return out
}

// addresses reads the elements of tunnel-sources with their counters.
func addresses(elems []nftables.SetElement) map[netip.Addr]Counter {
	out := make(map[netip.Addr]Counter, len(elems))
	for _, e := range elems {
		if len(e.Key) != 4 {
			continue
		}
		var c Counter
		if e.Counter != nil {
			c = Counter{Packets: e.Counter.Packets, Bytes: e.Counter.Bytes}
		}
		out[netip.AddrFrom4([4]byte(e.Key))] = c
	}
	return out
}

// ruleCounter is the value of the first counter in a rule.
func ruleCounter(r *nftables.Rule) Counter {
	for _, e := range r.Exprs {
		if c, ok := e.(*expr.Counter); ok {
			return Counter{Packets: c.Packets, Bytes: c.Bytes}
		}
	}
	return Counter{}
}

func sourceElements(as []netip.Addr) []nftables.SetElement {
	elems := make([]nftables.SetElement, len(as))
	for i, a := range as {
		k := a.As4()
		elems[i] = nftables.SetElement{Key: k[:]}
	}
	return elems
}

// intervalElements are the elements that make p an interval: its start and,
// unless p reaches the top of the address space, the end (exclusive).
func intervalElements(p netip.Prefix) []nftables.SetElement {
	start := p.Addr().As4()
	elems := []nftables.SetElement{{Key: start[:]}}
	end := uint64(binary.BigEndian.Uint32(start[:])) + uint64(1)<<(32-p.Bits())
	if end < 1<<32 {
		var k [4]byte
		binary.BigEndian.PutUint32(k[:], uint32(end))
		elems = append(elems, nftables.SetElement{Key: k[:], IntervalEnd: true})
	}
	return elems
}

func setElements(ps []netip.Prefix) []nftables.SetElement {
	var elems []nftables.SetElement
	for _, p := range ps {
		elems = append(elems, intervalElements(p)...)
	}
	return elems
}

// session runs f on a netlink connection to nftables in the Table's
// namespace, one call of the Table's at a time.
func (t *Table) session(f func(c *nftables.Conn) error) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	c, err := t.conn()
	if err != nil {
		return err
	}
	defer c.CloseLasting()
	return f(c)
}

// Apply brings the twill table to r in one netlink batch. It changes only
// what differs: applying the same Rules again sends nothing, and the
// counters of peers that stay keep counting.
func (t *Table) Apply(r Rules) error {
	r, err := r.normalized()
	if err != nil {
		return err
	}
	return t.session(func(c *nftables.Conn) error {
		st, err := readState(c)
		if err != nil {
			return fmt.Errorf("read nftables table %s: %w", TableName, err)
		}
		setIDs.Lock()
		ops, summary, err := plan(c, st, r)
		setIDs.Unlock()
		if err != nil {
			return fmt.Errorf("plan nftables table %s: %w", TableName, err)
		}
		if ops == 0 {
			t.log.Debug("nftables table up to date", "table", TableName, "peers", len(r.Peers))
			return nil
		}
		if err := c.Flush(); err != nil {
			return fmt.Errorf("apply nftables table %s (%s): %w", TableName, summary, err)
		}
		t.log.Info("nftables table applied", "table", TableName, "changes", summary, "peers", len(r.Peers))
		return nil
	})
}

// plan queues on c the messages that turn st into r and returns how many
// changes it queued and a summary of them.
func plan(c *nftables.Conn, st *state, r Rules) (int, string, error) {
	tbl := twillTable()
	var changes []string
	note := func(format string, a ...any) { changes = append(changes, fmt.Sprintf(format, a...)) }

	if !st.table {
		c.AddTable(tbl)
		note("create table")
	}

	desired := desiredChains(r)
	want := map[string]bool{}
	for _, cs := range desired {
		want[cs.name] = true
	}

	// Sets of the wrong shape are made again; the rules that refer to them
	// must go first, so every base chain is then rewritten.
	recreate := map[string]bool{}
	for _, name := range []string{setTx, setRx} {
		if s, ok := st.sets[name]; ok && (!s.Interval || s.IsMap || s.KeyType.Name != nftables.TypeIPAddr.Name) {
			recreate[name] = true
		}
	}
	if s, ok := st.sets[setSources]; ok && (s.Interval || s.IsMap || s.KeyType.Name != nftables.TypeIPAddr.Name) {
		recreate[setSources] = true
	}

	// Chains: drop the ones not wanted, flush the ones whose rules differ,
	// delete and re-add the ones whose hook differs.
	rewrite := map[string]bool{}
	addChain := map[string]bool{}
	for name, ch := range st.chains {
		if !want[name] {
			c.FlushChain(ch)
			c.DelChain(ch)
			note("delete chain %s", name)
		}
	}
	for _, cs := range desired {
		ch, ok := st.chains[cs.name]
		switch {
		case !ok:
			addChain[cs.name], rewrite[cs.name] = true, true
			note("add chain %s", cs.name)
		case ch.Type != cs.typ || ch.Hooknum == nil || *ch.Hooknum != *cs.hook ||
			ch.Priority == nil || *ch.Priority != *cs.priority:
			c.FlushChain(ch)
			c.DelChain(ch)
			addChain[cs.name], rewrite[cs.name] = true, true
			note("replace chain %s", cs.name)
		case len(recreate) > 0 || !slices.Equal(st.comments[cs.name], comments(cs.rules)):
			c.FlushChain(ch)
			rewrite[cs.name] = true
			note("rewrite chain %s", cs.name)
		}
	}

	// Sets and their elements.
	for name := range st.sets {
		keep := name == setTx || name == setRx || (name == setSources && r.Tunnel != nil)
		if !keep || recreate[name] {
			c.DelSet(&nftables.Set{Table: tbl, Name: name})
			note("delete set %s", name)
		}
	}
	if r.Tunnel != nil {
		n, err := planSources(c, tbl, st, r.Tunnel.Sources, recreate[setSources])
		if err != nil {
			return 0, "", err
		}
		if n != "" {
			note("%s", n)
		}
	}
	for _, name := range []string{setTx, setRx} {
		s := newPeerSet(tbl, name)
		_, ok := st.sets[name]
		if !ok || recreate[name] {
			if err := c.AddSet(s, nil); err != nil {
				return 0, "", fmt.Errorf("add set %s: %w", name, err)
			}
			note("add set %s", name)
			if err := addElements(c, s, r.Peers); err != nil {
				return 0, "", err
			}
			if len(r.Peers) > 0 {
				note("add %d peers to %s", len(r.Peers), name)
			}
			continue
		}
		have := st.elements[name]
		var gone, added []netip.Prefix
		for p := range have {
			if _, found := slices.BinarySearchFunc(r.Peers, p, comparePrefix); !found {
				gone = append(gone, p)
			}
		}
		for _, p := range r.Peers {
			if _, ok := have[p]; !ok {
				added = append(added, p)
			}
		}
		slices.SortFunc(gone, comparePrefix)
		for chunk := range slices.Chunk(setElements(gone), elementsPerCall) {
			if err := c.SetDeleteElements(s, chunk); err != nil {
				return 0, "", fmt.Errorf("delete elements of set %s: %w", name, err)
			}
		}
		if len(gone) > 0 {
			note("remove %d peers from %s", len(gone), name)
		}
		if err := addElements(c, s, added); err != nil {
			return 0, "", err
		}
		if len(added) > 0 {
			note("add %d peers to %s", len(added), name)
		}
	}

	// Chains and rules, after the sets they refer to.
	for _, cs := range desired {
		ch := &nftables.Chain{Name: cs.name, Table: tbl, Type: cs.typ, Hooknum: cs.hook, Priority: cs.priority}
		if addChain[cs.name] {
			c.AddChain(ch)
		}
		if !rewrite[cs.name] {
			continue
		}
		for _, rs := range cs.rules {
			c.AddRule(&nftables.Rule{
				Table:    tbl,
				Chain:    ch,
				Exprs:    rs.exprs,
				UserData: userdata.AppendString(nil, userdata.TypeComment, rs.comment),
			})
		}
	}
	return len(changes), strings.Join(changes, "; "), nil
}

// planSources queues what makes tunnel-sources hold exactly want, and
// says what it queued ("" for nothing).
func planSources(c *nftables.Conn, tbl *nftables.Table, st *state, want []netip.Addr, recreate bool) (string, error) {
	s := &nftables.Set{Table: tbl, Name: setSources, KeyType: nftables.TypeIPAddr, Counter: true}
	_, exists := st.sets[setSources]
	have := st.sources
	var notes []string
	if !exists || recreate {
		if err := c.AddSet(s, nil); err != nil {
			return "", fmt.Errorf("add set %s: %w", setSources, err)
		}
		notes = append(notes, "add set "+setSources)
		have = nil
	}
	var gone, added []netip.Addr
	for a := range have {
		if _, found := slices.BinarySearchFunc(want, a, netip.Addr.Compare); !found {
			gone = append(gone, a)
		}
	}
	for _, a := range want {
		if _, ok := have[a]; !ok {
			added = append(added, a)
		}
	}
	slices.SortFunc(gone, netip.Addr.Compare)
	for chunk := range slices.Chunk(sourceElements(gone), elementsPerCall) {
		if err := c.SetDeleteElements(s, chunk); err != nil {
			return "", fmt.Errorf("delete elements of set %s: %w", setSources, err)
		}
	}
	for chunk := range slices.Chunk(sourceElements(added), elementsPerCall) {
		if err := c.SetAddElements(s, chunk); err != nil {
			return "", fmt.Errorf("add elements to set %s: %w", setSources, err)
		}
	}
	if len(gone) > 0 {
		notes = append(notes, fmt.Sprintf("remove %d tunnel sources", len(gone)))
	}
	if len(added) > 0 {
		notes = append(notes, fmt.Sprintf("add %d tunnel sources", len(added)))
	}
	return strings.Join(notes, "; "), nil
}

// Tunnel reads the counters of the Tunnel guard: per admitted source, and
// of what was dropped. Without a guard (or a table) they are empty.
func (t *Table) Tunnel() (TunnelCounters, error) {
	out := TunnelCounters{Sources: map[netip.Addr]Counter{}}
	err := t.session(func(c *nftables.Conn) error {
		if ok, err := tableExists(c); err != nil || !ok {
			return err
		}
		var err error
		out, err = readTunnel(c)
		return err
	})
	return out, err
}

// readTunnel reads the tunnel guard's counters from an existing table.
func readTunnel(c *nftables.Conn) (TunnelCounters, error) {
	out := TunnelCounters{Sources: map[netip.Addr]Counter{}}
	tbl := twillTable()
	rules, err := c.GetRules(tbl, &nftables.Chain{Name: chainInput, Table: tbl})
	if err != nil {
		return out, fmt.Errorf("read the tunnel guard in table %s: %w", TableName, err)
	}
	guarded := false
	for _, r := range rules {
		if comment, _ := userdata.GetString(r.UserData, userdata.TypeComment); strings.HasSuffix(comment, dropComment) {
			out.Dropped, guarded = ruleCounter(r), true
		}
	}
	if !guarded {
		return out, nil
	}
	elems, err := c.GetSetElements(&nftables.Set{Table: tbl, Name: setSources, KeyType: nftables.TypeIPAddr})
	if err != nil {
		return out, fmt.Errorf("read counters in set %s of table %s: %w", setSources, TableName, err)
	}
	out.Sources = addresses(elems)
	return out, nil
}

func addElements(c *nftables.Conn, s *nftables.Set, ps []netip.Prefix) error {
	for chunk := range slices.Chunk(setElements(ps), elementsPerCall) {
		if err := c.SetAddElements(s, chunk); err != nil {
			return fmt.Errorf("add elements to set %s: %w", s.Name, err)
		}
	}
	return nil
}

func comments(rs []ruleSpec) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.comment
	}
	return out
}

// Counters returns the counters of every peer in the table, read in one dump
// per direction. A table that does not exist has no counters.
func (t *Table) Counters() (map[netip.Prefix]PeerCounters, error) {
	out := map[netip.Prefix]PeerCounters{}
	err := t.session(func(c *nftables.Conn) error {
		ok, err := tableExists(c)
		if err != nil || !ok {
			return err
		}
		out, err = readCounters(c)
		return err
	})
	return out, err
}

// readCounters reads the per-peer counters from an existing table.
func readCounters(c *nftables.Conn) (map[netip.Prefix]PeerCounters, error) {
	tbl := twillTable()
	var tx, rx map[netip.Prefix]PeerCounters
	for _, d := range []struct {
		name string
		out  *map[netip.Prefix]PeerCounters
	}{{setTx, &tx}, {setRx, &rx}} {
		elems, err := c.GetSetElements(&nftables.Set{Table: tbl, Name: d.name, KeyType: nftables.TypeIPAddr})
		if err != nil {
			return nil, fmt.Errorf("read counters in set %s of table %s: %w", d.name, TableName, err)
		}
		*d.out = intervals(elems)
	}
	out := make(map[netip.Prefix]PeerCounters, len(tx))
	for p, c := range tx {
		out[p] = PeerCounters{Tx: c.Tx}
	}
	for p, c := range rx {
		pc := out[p]
		pc.Rx = c.Tx
		out[p] = pc
	}
	return out, nil
}

// Watch calls changed whenever the twill table, or one of its chains,
// rules or sets, is deleted in the Table's namespace, by anyone (Apply's
// own rewrites too), until ctx ends; then it returns nil. No netlink event
// of the routing tables says that an operator ran `nft delete table ip
// twill`: this is the nftables monitor that does, so that a repair does
// not wait for the next resync.
func (t *Table) Watch(ctx context.Context, changed func()) error {
	var opts []nftables.ConnOption
	if t.netns > 0 {
		opts = append(opts, nftables.WithNetNSFd(t.netns))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return fmt.Errorf("open nftables netlink connection: %w", err)
	}
	// Every event: the library hands changes over when their batch's
	// generation message comes, which only the full set includes.
	mon := nftables.NewMonitor(nftables.WithMonitorEventBuffer(64))
	events, err := c.AddGenerationalMonitor(mon)
	if err != nil {
		return fmt.Errorf("monitor nftables: %w", err)
	}
	defer func() {
		mon.Close()
		for range events { // until the monitor's goroutine is gone
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return nil
		case batch, ok := <-events:
			if !ok {
				return errors.New("nftables monitor closed")
			}
			if slices.ContainsFunc(batch.Changes, concernsTwill) {
				changed()
			}
		}
	}
}

// concernsTwill reports whether a monitor event deletes something of the
// twill table.
func concernsTwill(ev *nftables.MonitorEvent) bool {
	switch ev.Type {
	case nftables.MonitorEventTypeDelTable, nftables.MonitorEventTypeDelChain, nftables.MonitorEventTypeDelRule, nftables.MonitorEventTypeDelSet:
	default:
		return false
	}
	var tbl *nftables.Table
	switch d := ev.Data.(type) {
	case *nftables.Table:
		tbl = d
	case *nftables.Chain:
		tbl = d.Table
	case *nftables.Rule:
		tbl = d.Table
	case *nftables.Set:
		tbl = d.Table
	}
	return tbl != nil && tbl.Name == TableName && tbl.Family == nftables.TableFamilyIPv4
}

// Cleanup deletes the twill table and everything in it; nothing else. A
// table that does not exist is not an error.
func (t *Table) Cleanup() error {
	return t.session(func(c *nftables.Conn) error {
		ok, err := tableExists(c)
		if err != nil || !ok {
			return err
		}
		c.DelTable(twillTable())
		if err := c.Flush(); err != nil {
			return fmt.Errorf("delete nftables table %s: %w", TableName, err)
		}
		t.log.Info("nftables table deleted", "table", TableName)
		return nil
	})
}
