// Package plural writes counts in English for messages people read: "1
// pod", "2 pods", "0 nodes".
//
// It knows regular plurals only (a word plus "s", or a plural form given);
// it must not grow into a translation layer.
package plural

import "strconv"

// Count is n and the word, plural unless n is 1 or -1: Count(1, "pod") is
// "1 pod", Count(3, "pod") is "3 pods".
func Count(n int, word string) string {
	return strconv.Itoa(n) + " " + Word(n, word)
}

// Word is the word for n of it: "pod" for 1, "pods" otherwise.
func Word(n int, word string) string {
	if n == 1 || n == -1 {
		return word
	}
	return word + "s"
}
