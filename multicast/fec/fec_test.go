package fec

import (
	"bytes"
	"math/rand/v2"
	"testing"
)

func block(rng *rand.Rand, k int) [][]byte {
	data := make([][]byte, k)
	for i := range data {
		data[i] = make([]byte, 1+rng.IntN(300))
		for j := range data[i] {
			data[i][j] = byte(rng.Uint32())
		}
	}
	return data
}

// Parity shard j does not depend on how many parity shards were computed.
func TestParityPrefix(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 1))
	c := NewCoder()
	for _, k := range []int{1, 2, 31, 64, 200, 255} {
		data := block(rng, k)
		few, err := c.Encode(data, 1)
		if err != nil {
			t.Fatal(err)
		}
		many, err := c.Encode(data, MaxShards-k)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(few[0], many[0]) {
			t.Fatalf("k=%d: parity 0 differs between 1 and %d parity shards", k, MaxShards-k)
		}
	}
}

// Any k of the k+m shards rebuild the data.
func TestReconstruct(t *testing.T) {
	rng := rand.New(rand.NewPCG(2, 2))
	c := NewCoder()
	for range 200 {
		k := 1 + rng.IntN(80)
		m := 1 + rng.IntN(min(40, MaxShards-k))
		data := block(rng, k)
		parity, err := c.Encode(data, m)
		if err != nil {
			t.Fatal(err)
		}
		lose := rng.IntN(min(k, m) + 1)
		got := append([][]byte(nil), data...)
		par := append([][]byte(nil), parity...)
		for _, i := range rng.Perm(k)[:lose] {
			got[i] = nil
		}
		for _, j := range rng.Perm(m)[:m-lose] { // keep exactly lose parity shards
			par[j] = nil
		}
		if err := c.Reconstruct(got, par); err != nil {
			t.Fatal(err)
		}
		for i := range data {
			if !bytes.Equal(got[i][:len(data[i])], data[i]) || len(bytes.Trim(got[i][len(data[i]):], "\x00")) != 0 {
				t.Fatalf("k=%d m=%d: shard %d differs", k, m, i)
			}
		}
	}
}

func TestRefuses(t *testing.T) {
	c := NewCoder()
	if _, err := c.Encode(make([][]byte, 200), 57); err == nil {
		t.Fatal("257 shards accepted")
	}
	if err := c.Reconstruct([][]byte{nil, {1}}, [][]byte{nil}); err == nil {
		t.Fatal("too few shards accepted")
	}
	if err := c.Reconstruct([][]byte{nil, {1, 2, 3}}, [][]byte{{1, 2}}); err == nil {
		t.Fatal("data shard over the shard size accepted")
	}
}
