//go:build linux

package nft

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
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

// family is what differs between the ip and the ip6 twill tables: the
// nftables family, the address length and where the addresses sit in the
// network header.
type family struct {
	nft       nftables.TableFamily
	name      string // nft's name of the header: "ip" or "ip6"
	addrLen   uint32
	offSaddr  uint32
	offDaddr  uint32
	keyType   nftables.SetDatatype
	multicast netip.Prefix
}

var (
	ipv4 = family{nftables.TableFamilyIPv4, "ip", 4, 12, 16, nftables.TypeIPAddr, netip.MustParsePrefix("224.0.0.0/4")}
	ipv6 = family{nftables.TableFamilyIPv6, "ip6", 16, 8, 24, nftables.TypeIP6Addr, netip.MustParsePrefix("ff00::/8")}
)

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
	fam   family
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

// IPv6 makes the Table the twill table of the ip6 family, for the IPv6
// pod network: its Rules hold IPv6 prefixes and addresses. Without it the
// Table is the ip family's. The two tables are independent; a dual-stack
// node keeps one of each.
func IPv6() Option {
	return func(t *Table) { t.fam = ipv6 }
}

// New returns the twill table. It does nothing to the kernel until Apply.
func New(log *slog.Logger, opts ...Option) *Table {
	t := &Table{log: log, fam: ipv4}
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

func (f family) table() *nftables.Table {
	return &nftables.Table{Name: TableName, Family: f.nft}
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

func desiredChains(f family, r Rules) []chainSpec {
	offSaddr, offDaddr := f.offSaddr, f.offDaddr
	prefixRule := f.prefixRule
	lookupRule := f.lookupRule
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
			rules: append(f.tunnelRules(r.Tunnel), lookupRule(offSaddr, setRx)),
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
				prefixRule([]match{{offSaddr, cn, false}, {offDaddr, f.multicast, true}}, masq(), "masquerade fully-random"),
				prefixRule([]match{{offSaddr, cn, true}, {offDaddr, sub, false}}, ret(), "return"),
				prefixRule([]match{{offSaddr, cn, true}, {offDaddr, cn, false}}, masq(), "masquerade fully-random"),
			},
		})
	}
	return chains
}

// match is "ip saddr|daddr [!=] prefix" (ip6 in the ip6 table).
type match struct {
	offset uint32
	prefix netip.Prefix
	negate bool
}

func (f family) fieldName(offset uint32) string {
	if offset == f.offSaddr {
		return f.name + " saddr"
	}
	return f.name + " daddr"
}

func (f family) prefixRule(ms []match, verdict expr.Any, verdictText string) ruleSpec {
	var exprs []expr.Any
	var text []string
	for _, m := range ms {
		mask := net.CIDRMask(m.prefix.Bits(), int(f.addrLen*8))
		addr := m.prefix.Addr().AsSlice()
		op, opText := expr.CmpOpEq, ""
		if m.negate {
			op, opText = expr.CmpOpNeq, "!= "
		}
		exprs = append(exprs,
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: m.offset, Len: f.addrLen},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: f.addrLen, Mask: mask, Xor: make([]byte, f.addrLen)},
			&expr.Cmp{Op: op, Register: 1, Data: addr},
		)
		text = append(text, fmt.Sprintf("%s %s%s", f.fieldName(m.offset), opText, m.prefix))
	}
	exprs = append(exprs, verdict)
	text = append(text, verdictText)
	return ruleSpec{comment: strings.Join(text, " "), exprs: exprs}
}

func (f family) lookupRule(offset uint32, set string) ruleSpec {
	return ruleSpec{
		comment: fmt.Sprintf("%s @%s", f.fieldName(offset), set),
		exprs: []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: f.addrLen},
			&expr.Lookup{SourceRegister: 1, SetName: set},
		},
	}
}

// tunnelRules are the guard's two rules: drop (and count) encapsulated
// packets from sources that are not peers, count the others per source.
func (f family) tunnelRules(t *Tunnel) []ruleSpec {
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
	source := &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: f.offSaddr, Len: f.addrLen}
	drop := append(slices.Clone(match), source,
		&expr.Lookup{SourceRegister: 1, SetName: setSources, Invert: true},
		&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop})
	count := append(slices.Clone(match), source, &expr.Lookup{SourceRegister: 1, SetName: setSources})
	return []ruleSpec{
		{comment: text + " " + f.name + " saddr != @" + setSources + " " + dropComment, exprs: drop},
		{comment: text + " " + f.name + " saddr @" + setSources, exprs: count},
	}
}

// dropComment ends the comment of the guard's drop rule, whose counter is
// the count of dropped packets.
const dropComment = "counter drop"

func (f family) newPeerSet(name string) *nftables.Set {
	return &nftables.Set{
		Table:    f.table(),
		Name:     name,
		KeyType:  f.keyType,
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

func (f family) tableExists(c *nftables.Conn) (bool, error) {
	tables, err := c.ListTablesOfFamily(f.nft)
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

func (f family) readState(c *nftables.Conn) (*state, error) {
	st := &state{
		chains:   map[string]*nftables.Chain{},
		comments: map[string][]string{},
		sets:     map[string]*nftables.Set{},
		elements: map[string]map[netip.Prefix]PeerCounters{},
	}
	var err error
	if st.table, err = f.tableExists(c); err != nil || !st.table {
		return st, err
	}
	tbl := f.table()
	chains, err := c.ListChainsOfTableFamily(f.nft)
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
			st.sources = f.addresses(elems)
			continue
		}
		if s.Name != setTx && s.Name != setRx {
			continue
		}
		elems, err := c.GetSetElements(s)
		if err != nil {
			return nil, fmt.Errorf("list elements of set %s: %w", s.Name, err)
		}
		st.elements[s.Name] = f.intervals(elems)
	}
	return st, nil
}

// intervals turns the elements of an interval set back into prefixes, each
// with the counter of its start element (in Tx). Ranges that are not a
// prefix are left out: twill never adds them.
func (f family) intervals(elems []nftables.SetElement) map[netip.Prefix]PeerCounters {
	var starts []nftables.SetElement
	var ends []netip.Addr
	for _, e := range elems {
		a, ok := f.addr(e.Key)
		if !ok {
			continue
		}
		if e.IntervalEnd {
			ends = append(ends, a)
		} else {
			starts = append(starts, e)
		}
	}
	slices.SortFunc(ends, netip.Addr.Compare)
	out := make(map[netip.Prefix]PeerCounters, len(starts))
	for _, s := range starts {
		lo, _ := f.addr(s.Key)
		var hi netip.Addr // zero: the range reaches the top of the address space (no end element)
		if i, _ := slices.BinarySearchFunc(ends, lo.Next(), netip.Addr.Compare); i < len(ends) {
			hi = ends[i]
		}
		p, ok := rangePrefix(lo, hi)
		if !ok {
			continue
		}
		var pc PeerCounters
		if s.Counter != nil {
			pc.Tx = Counter{Packets: s.Counter.Packets, Bytes: s.Counter.Bytes}
		}
		out[p] = pc
	}
	return out
}

// rangePrefix is the prefix that spans [lo, hi) (hi zero: to the top of
// the address space), if one does.
func rangePrefix(lo, hi netip.Addr) (netip.Prefix, bool) {
	for bits := 0; bits <= lo.BitLen(); bits++ {
		p := netip.PrefixFrom(lo, bits)
		if p.Masked().Addr() != lo {
			continue
		}
		if end := prefixEnd(p); end == hi {
			return p, true
		}
	}
	return netip.Prefix{}, false
}

// prefixEnd is the first address after p; zero when p reaches the top of
// the address space.
func prefixEnd(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	last, _ := netip.AddrFromSlice(b)
	return last.Next() // zero after the last address
}

// addr reads a set element's key as an address of the family.
func (f family) addr(key []byte) (netip.Addr, bool) {
	if uint32(len(key)) != f.addrLen {
		return netip.Addr{}, false
	}
	return netip.AddrFromSlice(key)
}

// addresses reads the elements of tunnel-sources with their counters.
func (f family) addresses(elems []nftables.SetElement) map[netip.Addr]Counter {
	out := make(map[netip.Addr]Counter, len(elems))
	for _, e := range elems {
		a, ok := f.addr(e.Key)
		if !ok {
			continue
		}
		var c Counter
		if e.Counter != nil {
			c = Counter{Packets: e.Counter.Packets, Bytes: e.Counter.Bytes}
		}
		out[a] = c
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
		elems[i] = nftables.SetElement{Key: a.AsSlice()}
	}
	return elems
}

// intervalElements are the elements that make p an interval: its start and,
// unless p reaches the top of the address space, the end (exclusive).
func intervalElements(p netip.Prefix) []nftables.SetElement {
	elems := []nftables.SetElement{{Key: p.Addr().AsSlice()}}
	if end := prefixEnd(p); end.IsValid() {
		elems = append(elems, nftables.SetElement{Key: end.AsSlice(), IntervalEnd: true})
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
	r, err := r.normalized(t.fam == ipv6)
	if err != nil {
		return err
	}
	return t.session(func(c *nftables.Conn) error {
		st, err := t.fam.readState(c)
		if err != nil {
			return fmt.Errorf("read nftables table %s: %w", TableName, err)
		}
		setIDs.Lock()
		ops, summary, err := t.fam.plan(c, st, r)
		setIDs.Unlock()
		if err != nil {
			return fmt.Errorf("plan nftables table %s: %w", TableName, err)
		}
		if ops == 0 {
			t.log.Debug("nftables table up to date", "table", t.fam.name+" "+TableName, "peers", len(r.Peers))
			return nil
		}
		if err := c.Flush(); err != nil {
			return fmt.Errorf("apply nftables table %s (%s): %w", TableName, summary, err)
		}
		t.log.Info("nftables table applied", "table", t.fam.name+" "+TableName, "changes", summary, "peers", len(r.Peers))
		return nil
	})
}

// plan queues on c the messages that turn st into r and returns how many
// changes it queued and a summary of them.
func (f family) plan(c *nftables.Conn, st *state, r Rules) (int, string, error) {
	tbl := f.table()
	var changes []string
	note := func(format string, a ...any) { changes = append(changes, fmt.Sprintf(format, a...)) }

	if !st.table {
		c.AddTable(tbl)
		note("create table")
	}

	desired := desiredChains(f, r)
	want := map[string]bool{}
	for _, cs := range desired {
		want[cs.name] = true
	}

	// Sets of the wrong shape are made again; the rules that refer to them
	// must go first, so every base chain is then rewritten.
	recreate := map[string]bool{}
	for _, name := range []string{setTx, setRx} {
		if s, ok := st.sets[name]; ok && (!s.Interval || s.IsMap || s.KeyType.Name != f.keyType.Name) {
			recreate[name] = true
		}
	}
	if s, ok := st.sets[setSources]; ok && (s.Interval || s.IsMap || s.KeyType.Name != f.keyType.Name) {
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
		n, err := f.planSources(c, st, r.Tunnel.Sources, recreate[setSources])
		if err != nil {
			return 0, "", err
		}
		if n != "" {
			note("%s", n)
		}
	}
	for _, name := range []string{setTx, setRx} {
		s := f.newPeerSet(name)
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
func (f family) planSources(c *nftables.Conn, st *state, want []netip.Addr, recreate bool) (string, error) {
	s := &nftables.Set{Table: f.table(), Name: setSources, KeyType: f.keyType, Counter: true}
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
		if ok, err := t.fam.tableExists(c); err != nil || !ok {
			return err
		}
		var err error
		out, err = t.fam.readTunnel(c)
		return err
	})
	return out, err
}

// readTunnel reads the tunnel guard's counters from an existing table.
func (f family) readTunnel(c *nftables.Conn) (TunnelCounters, error) {
	out := TunnelCounters{Sources: map[netip.Addr]Counter{}}
	tbl := f.table()
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
	elems, err := c.GetSetElements(&nftables.Set{Table: tbl, Name: setSources, KeyType: f.keyType})
	if err != nil {
		return out, fmt.Errorf("read counters in set %s of table %s: %w", setSources, TableName, err)
	}
	out.Sources = f.addresses(elems)
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
		ok, err := t.fam.tableExists(c)
		if err != nil || !ok {
			return err
		}
		out, err = t.fam.readCounters(c)
		return err
	})
	return out, err
}

// readCounters reads the per-peer counters from an existing table.
func (f family) readCounters(c *nftables.Conn) (map[netip.Prefix]PeerCounters, error) {
	tbl := f.table()
	var tx, rx map[netip.Prefix]PeerCounters
	for _, d := range []struct {
		name string
		out  *map[netip.Prefix]PeerCounters
	}{{setTx, &tx}, {setRx, &rx}} {
		elems, err := c.GetSetElements(&nftables.Set{Table: tbl, Name: d.name, KeyType: f.keyType})
		if err != nil {
			return nil, fmt.Errorf("read counters in set %s of table %s: %w", d.name, TableName, err)
		}
		*d.out = f.intervals(elems)
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
			if slices.ContainsFunc(batch.Changes, t.fam.concernsTwill) {
				changed()
			}
		}
	}
}

// concernsTwill reports whether a monitor event deletes something of the
// twill table.
func (f family) concernsTwill(ev *nftables.MonitorEvent) bool {
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
	return tbl != nil && tbl.Name == TableName && tbl.Family == f.nft
}

// Cleanup deletes the twill table and everything in it; nothing else. A
// table that does not exist is not an error.
func (t *Table) Cleanup() error {
	return t.session(func(c *nftables.Conn) error {
		ok, err := t.fam.tableExists(c)
		if err != nil || !ok {
			return err
		}
		c.DelTable(t.fam.table())
		if err := c.Flush(); err != nil {
			return fmt.Errorf("delete nftables table %s: %w", TableName, err)
		}
		t.log.Info("nftables table deleted", "table", t.fam.name+" "+TableName)
		return nil
	})
}
