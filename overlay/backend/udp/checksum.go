package udp

import (
	"encoding/binary"
	"math/bits"
)

// sumBytes adds the 16-bit big-endian words of b (a trailing odd byte as
// the high byte of a word) to initial, ones'-complement style, and returns
// the sum folded to 16 bits (not complemented). The loop adds eight bytes
// at a time in the machine's order and swaps at the end (RFC 1071: the
// ones'-complement sum is independent of byte order up to a final swap),
// which is what makes checksumming a segment cheaper than copying it.
func sumBytes(b []byte, initial uint32) uint16 {
	var s0, s1, s2, s3, c uint64
	for len(b) >= 32 {
		s0, c = bits.Add64(s0, binary.LittleEndian.Uint64(b[0:8]), 0)
		s1 += c
		s2, c = bits.Add64(s2, binary.LittleEndian.Uint64(b[8:16]), 0)
		s3 += c
		s0, c = bits.Add64(s0, binary.LittleEndian.Uint64(b[16:24]), 0)
		s1 += c
		s2, c = bits.Add64(s2, binary.LittleEndian.Uint64(b[24:32]), 0)
		s3 += c
		b = b[32:]
	}
	var sum uint64
	sum, c = bits.Add64(s0, s2, 0)
	carries := s1 + s3 + c
	for len(b) >= 8 {
		sum, c = bits.Add64(sum, binary.LittleEndian.Uint64(b[:8]), 0)
		carries += c
		b = b[8:]
	}
	if len(b) >= 4 {
		sum, c = bits.Add64(sum, uint64(binary.LittleEndian.Uint32(b[:4])), 0)
		carries += c
		b = b[4:]
	}
	if len(b) >= 2 {
		sum, c = bits.Add64(sum, uint64(binary.LittleEndian.Uint16(b[:2])), 0)
		carries += c
		b = b[2:]
	}
	if len(b) == 1 {
		sum, c = bits.Add64(sum, uint64(b[0]), 0)
		carries += c
	}
	// Each carry out of bit 63 is worth 1 (2^64 = 1 mod 2^16-1).
	sum, c = bits.Add64(sum, carries, 0)
	sum += c
	f := fold64(sum)
	f = f>>8 | f<<8&0xff00 // machine (little-endian) order to network order
	return fold64(uint64(f) + uint64(initial))
}

// fold64 folds a ones'-complement sum to 16 bits.
func fold64(s uint64) uint16 {
	s = s&0xffffffff + s>>32
	s = s&0xffffffff + s>>32
	s = s&0xffff + s>>16
	s = s&0xffff + s>>16
	return uint16(s)
}

// pseudoSum is the ones'-complement sum of the IPv4 pseudo-header: source
// and destination (4 bytes each), protocol and the layer-4 length.
func pseudoSum(src, dst []byte, proto byte, l4len int) uint32 {
	s := uint32(binary.BigEndian.Uint16(src[0:2])) + uint32(binary.BigEndian.Uint16(src[2:4])) +
		uint32(binary.BigEndian.Uint16(dst[0:2])) + uint32(binary.BigEndian.Uint16(dst[2:4])) +
		uint32(proto) + uint32(l4len)
	return s
}
