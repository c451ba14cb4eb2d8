package main

import (
	"fmt"
	"testing"
)

func TestStageIsStableAndGrows(t *testing.T) {
	var ids []string
	for i := range 200 {
		ids = append(ids, fmt.Sprintf("st-%03d", i))
	}
	ten := stage(append([]string(nil), ids...), "abc", 10)
	again := stage(append([]string(nil), ids...), "abc", 10)
	fifty := stage(append([]string(nil), ids...), "abc", 50)
	if len(ten) != 20 || len(fifty) != 100 || fmt.Sprint(ten) != fmt.Sprint(again) {
		t.Fatalf("10%%: %d stations, 50%%: %d, stable: %v", len(ten), len(fifty), fmt.Sprint(ten) == fmt.Sprint(again))
	}
	in := map[string]bool{}
	for _, id := range fifty {
		in[id] = true
	}
	for _, id := range ten {
		if !in[id] {
			t.Errorf("%s is in the 10%% stage and not in the 50%% one", id)
		}
	}
	if other := stage(append([]string(nil), ids...), "def", 10); fmt.Sprint(other) == fmt.Sprint(ten) {
		t.Error("another release picks the same stations")
	}
	if n := len(stage([]string{"a", "b", "c"}, "x", 1)); n != 1 {
		t.Errorf("1%% of 3 stations: %d, want 1", n)
	}
}

func TestUpdateOf(t *testing.T) {
	for payload, want := range map[string]string{
		`{"state":"online","update":{"state":"idle"}}`:                            "",
		`{"state":"online"}`:                                                      "",
		`{"update":{"state":"downloading","version":"1.5.0","progress":"10/20"}}`: "update downloading 1.5.0 10/20",
		`{"update":{"state":"rolled_back","version":"1.5.0","previous":"1.4.0"}}`: "update rolled_back 1.5.0",
		`not json`: "",
	} {
		if got := updateOf([]byte(payload)); got != want {
			t.Errorf("updateOf(%s) = %q, want %q", payload, got, want)
		}
	}
}
