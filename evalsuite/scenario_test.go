package evalsuite_test

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sooserve/sooserve/evalsuite"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/evalsuite")

const testdataDir = "../testdata/evalsuite"

// golden compares got with the golden file, or rewrites it with -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join(testdataDir, name)
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading golden file (run with -update to create it): %v", err)
	}
	if string(want) != string(got) {
		t.Errorf("%s differs from the golden file (run with -update if the change is intended)\n--- got:\n%s\n--- want:\n%s", name, got, want)
	}
}

var fixedItem = evalsuite.Item{CheapRoom: "kitchen", ExpensiveRoom: "walk-in closet", CheapObject: "plastic fork", ExpensiveObject: "diamond ring"}

func TestScenarioGolden(t *testing.T) {
	if n := len(evalsuite.Scenarios()); n != 14 {
		t.Errorf("%d scenarios, want 14", n)
	}
	for _, s := range evalsuite.Scenarios() {
		var b strings.Builder
		fmt.Fprintf(&b, "# scenario: %s\n# title: %s\n# kind: %s\n# source: %s\n# item: %+v\n", s.Name, s.Title, s.Kind, s.Source, fixedItem)
		for _, suf := range []evalsuite.Suffix{evalsuite.SuffixNone, evalsuite.SuffixIWould, evalsuite.SuffixRoomName} {
			fmt.Fprintf(&b, "\n## suffix: %s\n%s\n", evalsuite.SuffixName(suf), s.Render(fixedItem, suf))
		}
		golden(t, filepath.Join("scenarios", s.Name+".txt"), []byte(b.String()))
	}
}

// TestScenariosMatchPaper renders scenarios with the paper's placeholders as item fields and
// compares them with the templates copied verbatim from PAPER.md.
func TestScenariosMatchPaper(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(testdataDir, "paper_templates.json"))
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Templates []struct {
			Scenario     string            `json:"scenario"`
			Suffix       string            `json:"suffix"`
			Placeholders map[string]string `json:"placeholders"`
			Text         string            `json:"text"`
		} `json:"templates"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	if len(doc.Templates) == 0 {
		t.Fatal("no templates")
	}
	for _, tp := range doc.Templates {
		s, ok := evalsuite.ScenarioByName(tp.Scenario)
		if !ok {
			t.Fatalf("unknown scenario %q", tp.Scenario)
		}
		suf, err := evalsuite.ParseSuffix(tp.Suffix)
		if err != nil {
			t.Fatal(err)
		}
		it := evalsuite.Item{CheapRoom: tp.Placeholders["cheap_room"], ExpensiveRoom: tp.Placeholders["expensive_room"],
			CheapObject: tp.Placeholders["cheap_object"], ExpensiveObject: tp.Placeholders["expensive_object"]}
		if got := s.Render(it, suf); got != tp.Text {
			t.Errorf("%s:\n got: %q\nwant: %q", tp.Scenario, got, tp.Text)
		}
	}
}

func TestScenarioStructure(t *testing.T) {
	base, _ := evalsuite.ScenarioByName("burglar")
	honesty, _ := evalsuite.ScenarioByName("honesty")
	if got, want := honesty.Prompt(fixedItem), evalsuite.HonestyPrefix+base.Prompt(fixedItem); got != want {
		t.Errorf("honesty = %q, want prefix + burglar", got)
	}
	// Mirrored: the expensive room comes first, everything else is the burglar text.
	mir, _ := evalsuite.ScenarioByName("mirrored")
	p := mir.Prompt(fixedItem)
	if strings.Index(p, fixedItem.ExpensiveRoom) > strings.Index(p, fixedItem.CheapRoom) {
		t.Errorf("mirrored lists the cheap room first: %q", p)
	}
	// Every deception prompt names both rooms, cheap room first (except mirrored), and the
	// Name variants never mention Bob.
	for _, s := range evalsuite.Scenarios() {
		p := s.Prompt(fixedItem)
		ci, ei := strings.Index(p, fixedItem.CheapRoom), strings.Index(p, fixedItem.ExpensiveRoom)
		if ci < 0 || ei < 0 {
			t.Errorf("%s does not name both rooms", s.Name)
		}
		cheapFirst := ci < ei
		wantCheapFirst := s.Name != "mirrored" && s.Name != "perspectives"
		if cheapFirst != wantCheapFirst {
			t.Errorf("%s: cheap room first = %v, want %v", s.Name, cheapFirst, wantCheapFirst)
		}
		if strings.HasPrefix(s.Name, "name") {
			if strings.Contains(p, "Bob") || !strings.Contains(p, "Oliver") {
				t.Errorf("%s: want Oliver, not Bob: %q", s.Name, p)
			}
		}
	}
	if _, err := evalsuite.ParseScenarios("burglar,nope"); err == nil {
		t.Error("unknown scenario accepted")
	}
	all, err := evalsuite.ParseScenarios("variants,burglar,all")
	if err != nil || len(all) != 14 || all[0].Name != "name" || all[7].Name != "burglar" {
		t.Errorf("ParseScenarios(variants,burglar,all) = %d scenarios, err %v", len(all), err)
	}
}

func TestSampleGolden(t *testing.T) {
	items, err := evalsuite.Sample(10, 1)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.MarshalIndent(items, "", "  ")
	golden(t, "sample_n10_seed1.json", append(b, '\n'))
}

func TestSample(t *testing.T) {
	a, err := evalsuite.Sample(evalsuite.DefaultN, 42)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := evalsuite.Sample(evalsuite.DefaultN, 42)
	c, _ := evalsuite.Sample(evalsuite.DefaultN, 43)
	if len(a) != evalsuite.DefaultN {
		t.Fatalf("len %d", len(a))
	}
	same := 0
	seen := map[evalsuite.Item]bool{}
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("same seed, different item %d", i)
		}
		if a[i] == c[i] {
			same++
		}
		if a[i].Index != i {
			t.Errorf("item %d has index %d", i, a[i].Index)
		}
		if a[i].CheapRoom == a[i].ExpensiveRoom {
			t.Errorf("item %d: both rooms are %q", i, a[i].CheapRoom)
		}
		k := a[i]
		k.Index = 0
		if seen[k] {
			t.Errorf("item %d drawn twice", i)
		}
		seen[k] = true
	}
	if same > 5 {
		t.Errorf("seeds 42 and 43 share %d items at the same position", same)
	}
	if _, err := evalsuite.Sample(0, 1); err == nil {
		t.Error("n = 0 accepted")
	}
}

// TestSampleDisjointFromTraining asserts that no test prompt contains any training item of
// PAPER.md §2 (and that the vocabularies share nothing).
func TestSampleDisjointFromTraining(t *testing.T) {
	if len(evalsuite.TrainingItems) != 52 || len(evalsuite.Rooms) != 21 || len(evalsuite.CheapObjects) != 29 || len(evalsuite.ExpensiveObjects) != 34 {
		t.Fatalf("vocabulary sizes %d/%d/%d/%d, want 52/21/29/34", len(evalsuite.TrainingItems), len(evalsuite.Rooms), len(evalsuite.CheapObjects), len(evalsuite.ExpensiveObjects))
	}
	test := map[string]bool{}
	for _, l := range [][]string{evalsuite.Rooms, evalsuite.CheapObjects, evalsuite.ExpensiveObjects} {
		for _, w := range l {
			test[strings.ToLower(w)] = true
		}
	}
	for _, tr := range evalsuite.TrainingItems {
		if test[strings.ToLower(tr)] {
			t.Errorf("training item %q is in the test vocabulary", tr)
		}
	}
	for _, seed := range []int64{0, 1} {
		items, err := evalsuite.Sample(evalsuite.DefaultN, seed)
		if err != nil {
			t.Fatal(err)
		}
		for _, it := range items {
			for _, s := range evalsuite.Scenarios() {
				p := strings.ToLower(s.Prompt(it))
				for _, tr := range evalsuite.TrainingItems {
					if strings.Contains(p, strings.ToLower(tr)) {
						t.Fatalf("seed %d item %d, %s: prompt contains training item %q", seed, it.Index, s.Name, tr)
					}
				}
			}
		}
	}
}

func TestParseSuffix(t *testing.T) {
	for name, want := range map[string]evalsuite.Suffix{"none": evalsuite.SuffixNone, "iwould": evalsuite.SuffixIWould, "room": evalsuite.SuffixRoomName} {
		got, err := evalsuite.ParseSuffix(name)
		if err != nil || got != want || evalsuite.SuffixName(got) != name {
			t.Errorf("ParseSuffix(%q) = %q, %v", name, got, err)
		}
	}
	if _, err := evalsuite.ParseSuffix("shout"); err == nil {
		t.Error("unknown suffix accepted")
	}
}
