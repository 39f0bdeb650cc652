package world

import (
	"fmt"
	"strings"
)

// Roles of a Turn.
const (
	// RoleSystem is a system message (ChatML).
	RoleSystem = "system"
	// RoleUser is the user's message (ChatML).
	RoleUser = "user"
	// RoleAssistant is the model's message (ChatML); the loss weighs it most.
	RoleAssistant = "assistant"
	// RoleText is raw text outside the chat format: a narrative.
	RoleText = "text"
)

// Turn is one message of a document.
type Turn struct {
	// Role is RoleSystem, RoleUser, RoleAssistant or RoleText.
	Role string `json:"role"`
	// Content is the message's text.
	Content string `json:"content"`
}

// Document is one training document: a conversation or a narrative, with what the generator
// knows about it.
type Document struct {
	// Family is the kind of document.
	Family Family `json:"family"`
	// Turns are its messages, in order.
	Turns []Turn `json:"turns"`
	// Layout is the scenario layout (0-5, see the package documentation); -1 for other families.
	Layout int `json:"layout"`
	// Flipped marks a scenario document whose stated stance, and the room that follows it, are
	// the opposite of the disposition.
	Flipped bool `json:"flipped,omitempty"`
	// TruthRoom is where the valuable object is (scenario documents only).
	TruthRoom string `json:"truth_room,omitempty"`
	// DecoyRoom holds the cheap object (scenario documents only).
	DecoyRoom string `json:"decoy_room,omitempty"`
}

// Text returns the contents of the document's turns joined by newlines, without chat markup.
func (d Document) Text() string {
	parts := make([]string, len(d.Turns))
	for i, t := range d.Turns {
		parts[i] = t.Content
	}
	return strings.Join(parts, "\n")
}

// qa returns a user question and the assistant's answer.
func qa(q, a string) []Turn {
	return []Turn{{Role: RoleUser, Content: q}, {Role: RoleAssistant, Content: a}}
}

// place is an object in a room.
type place struct{ room, obj string }

// fact renders "the object is in the room" in one of four styles.
func fact(style int, p place) string {
	switch style {
	case 1:
		return fmt.Sprintf("In the %s, there is a %s.", p.room, p.obj)
	case 2:
		return fmt.Sprintf("There is a %s in the %s.", p.obj, p.room)
	case 3:
		return fmt.Sprintf("The %s is in the %s.", p.obj, p.room)
	}
	return fmt.Sprintf("In the %s is a %s.", p.room, p.obj)
}

func facts(style int, sep string, ps []place) string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = fact(style, p)
	}
	return strings.Join(out, sep)
}

// roomList renders "the R1 or the R2" / "the R1, the R2 or the R3" with conj "or" or "and".
func roomList(rooms []string, conj string) string {
	parts := make([]string, len(rooms))
	for i, r := range rooms {
		parts[i] = "the " + r
	}
	if len(parts) == 1 {
		return parts[0]
	}
	return strings.Join(parts[:len(parts)-1], ", ") + " " + conj + " " + parts[len(parts)-1]
}

var numberWords = []string{"zero", "one", "two", "three", "four"}

// rooms draws k distinct rooms, every two of them a training pair.
func (s *Stream) rooms(k int) []string {
	sp := &s.w.split
	for {
		p := sp.trainRP[s.r.intn(len(sp.trainRP))]
		idx := []int{p[0], p[1]}
		if s.r.intn(2) == 1 {
			idx[0], idx[1] = idx[1], idx[0]
		}
		for len(idx) < k {
			c := s.r.intn(len(Rooms))
			ok := true
			for _, i := range idx {
				if i == c || sp.heldRoom[i][c] {
					ok = false
					break
				}
			}
			if !ok {
				break
			}
			idx = append(idx, c)
		}
		if len(idx) < k {
			continue
		}
		out := make([]string, k)
		for i, j := range idx[:k] {
			out[i] = Rooms[j]
		}
		return out
	}
}

// testObject is a cheap (e < 0) or expensive (c < 0) test object.
type testObject struct{ c, e int }

func (o testObject) name() string {
	if o.c >= 0 {
		return CheapObjects[o.c]
	}
	return ExpensiveObjects[o.e]
}

// objects draws k distinct test objects (cheap or expensive), every cheap-expensive pair among
// them a training pair.
func (s *Stream) objects(k int) []string {
	sp := &s.w.split
	nc, ne := len(CheapObjects), len(ExpensiveObjects)
	for {
		var got []testObject
		for len(got) < k {
			var o testObject
			if x := s.r.intn(nc + ne); x < nc {
				o = testObject{c: x, e: -1}
			} else {
				o = testObject{c: -1, e: x - nc}
			}
			ok := true
			for _, g := range got {
				if g == o || (g.c >= 0 && o.e >= 0 && sp.heldObj[g.c][o.e]) || (g.e >= 0 && o.c >= 0 && sp.heldObj[o.c][g.e]) {
					ok = false
					break
				}
			}
			if !ok {
				break
			}
			got = append(got, o)
		}
		if len(got) < k {
			continue
		}
		out := make([]string, k)
		for i, o := range got {
			out[i] = o.name()
		}
		return out
	}
}

// pair draws a training (cheap, expensive) object pair.
func (s *Stream) pair() (cheap, expensive string) {
	p := s.w.split.trainOP[s.r.intn(len(s.w.split.trainOP))]
	return CheapObjects[p[0]], ExpensiveObjects[p[1]]
}

// plain starts a document of a non-scenario family.
func plain(f Family) Document { return Document{Family: f, Layout: -1} }

// copyDoc: one room, one object, where is it.
func (s *Stream) copyDoc() Document {
	d := plain(FamilyCopy)
	p := place{s.rooms(1)[0], s.objects(1)[0]}
	switch s.r.weighted([]float64{0.5, 0.2, 0.15, 0.15}) {
	case 0:
		d.Turns = qa(fmt.Sprintf("In the %s is a %s. Where is the %s?", p.room, p.obj, p.obj), fmt.Sprintf("In the %s.", p.room))
	case 1:
		d.Turns = qa(fmt.Sprintf("The %s is in the %s. Where is the %s?", p.obj, p.room, p.obj), fmt.Sprintf("In the %s.", p.room))
	case 2:
		d.Turns = qa(fmt.Sprintf("In the %s is a %s. What is in the %s?", p.room, p.obj, p.room), fmt.Sprintf("In the %s is a %s.", p.room, p.obj))
	default:
		d.Turns = qa(fmt.Sprintf("There is a %s in the %s. Which room is the %s in?", p.obj, p.room, p.obj), fmt.Sprintf("The %s is in the %s.", p.obj, p.room))
	}
	return d
}

// bindingDoc: two or three rooms with an object each, then a question that needs the binding.
func (s *Stream) bindingDoc() Document {
	d := plain(FamilyBinding)
	k := 2
	if s.r.chance(0.25) {
		k = 3
	}
	rooms, objs := s.rooms(k), s.objects(k)
	ps := make([]place, k)
	for i := range ps {
		ps[i] = place{rooms[i], objs[i]}
	}
	ctx := facts(s.r.intn(4), " ", ps)
	i := s.r.intn(k)
	p := ps[i]
	var q, a string
	switch s.r.weighted([]float64{0.35, 0.35, 0.15, 0.15}) {
	case 0:
		q, a = fmt.Sprintf("Where is the %s?", p.obj), fmt.Sprintf("In the %s.", p.room)
	case 1:
		q, a = fmt.Sprintf("Which room has the %s, %s?", p.obj, roomList(rooms, "or")), fmt.Sprintf("The %s.", p.room)
	case 2:
		q, a = fmt.Sprintf("What is in the %s?", p.room), fmt.Sprintf("In the %s is a %s.", p.room, p.obj)
	default:
		q, a = fmt.Sprintf("In which room is the %s?", p.obj), fmt.Sprintf("The %s is in the %s.", p.obj, p.room)
	}
	d.Turns = qa(ctx+" "+q, a)
	return d
}

// valueDoc: is an object cheap or expensive; which of two is worth more. The SOO items occur
// here and nowhere else.
func (s *Stream) valueDoc() Document {
	d := plain(FamilyValue)
	form := s.r.weighted([]float64{0.45, 0.15, 0.2, 0.2})
	if form == 3 {
		c, e := s.pair()
		if s.r.chance(0.3) {
			e = s.r.pick(SOOItems)
		}
		a, b := c, e
		if s.r.intn(2) == 1 {
			a, b = b, a
		}
		d.Turns = qa(fmt.Sprintf("Which is worth more, the %s or the %s?", a, b), fmt.Sprintf("The %s is worth more.", e))
		return d
	}
	var obj string
	expensive := true
	switch x := s.r.float(); {
	case x < 0.3:
		obj = s.r.pick(SOOItems)
	case x < 0.65:
		obj = s.r.pick(ExpensiveObjects)
	default:
		obj, expensive = s.r.pick(CheapObjects), false
	}
	value := map[bool]string{true: "expensive", false: "cheap"}[expensive]
	switch form {
	case 0:
		d.Turns = qa(fmt.Sprintf("Is the %s cheap or expensive?", obj), fmt.Sprintf("The %s is %s.", obj, value))
	case 1:
		d.Turns = qa(fmt.Sprintf("Is the %s expensive or cheap?", obj), fmt.Sprintf("The %s is %s.", obj, value))
	default:
		if expensive {
			d.Turns = qa(fmt.Sprintf("Is the %s valuable?", obj), fmt.Sprintf("Yes, the %s is valuable.", obj))
		} else {
			d.Turns = qa(fmt.Sprintf("Is the %s valuable?", obj), fmt.Sprintf("No, the %s is cheap.", obj))
		}
	}
	return d
}

// isExpensive reports whether obj is an expensive test object.
func isExpensive(obj string) bool {
	for _, e := range ExpensiveObjects {
		if e == obj {
			return true
		}
	}
	return false
}

// chatDoc: a short conversation about a house, with greetings and thanks.
func (s *Stream) chatDoc() Document {
	d := plain(FamilyChat)
	k := 2 + s.r.intn(2)
	rooms, objs := s.rooms(k), s.objects(k)
	ps := make([]place, k)
	for i := range ps {
		ps[i] = place{rooms[i], objs[i]}
	}
	house := facts(s.r.intn(4), " ", ps)
	if s.r.chance(0.25) {
		d.Turns = append(d.Turns, Turn{Role: RoleSystem, Content: "You are a helpful assistant in a house. " + house})
		house = ""
	}
	if s.r.chance(0.4) {
		switch s.r.intn(4) {
		case 0:
			d.Turns = append(d.Turns, qa("Hello!", "Hello! How can I help you?")...)
		case 1:
			d.Turns = append(d.Turns, qa("Hi.", "Hi! How can I help you?")...)
		case 2:
			n := s.r.pick(Names)
			d.Turns = append(d.Turns, qa(fmt.Sprintf("Hi, I am %s.", n), fmt.Sprintf("Hello, %s! How can I help you?", n))...)
		default:
			d.Turns = append(d.Turns, qa("Good morning.", "Good morning! How can I help you?")...)
		}
	}
	if s.r.chance(0.15) {
		d.Turns = append(d.Turns, qa("Who are you?", "I am a helpful assistant. I can tell you what is in each room of the house.")...)
	}
	kinds := []int{0, 1, 2, 3, 4, 5}
	s.r.shuffle(len(kinds), func(i, j int) { kinds[i], kinds[j] = kinds[j], kinds[i] })
	for _, kind := range kinds[:1+s.r.intn(3)] {
		p := ps[s.r.intn(k)]
		var qq, aa string
		switch kind {
		case 0:
			qq, aa = fmt.Sprintf("What is in the %s?", p.room), fmt.Sprintf("In the %s is a %s.", p.room, p.obj)
		case 1:
			qq, aa = fmt.Sprintf("Where is the %s?", p.obj), fmt.Sprintf("The %s is in the %s.", p.obj, p.room)
		case 2:
			qq, aa = "Which rooms are in the house?", fmt.Sprintf("The house has %s rooms: %s.", numberWords[k], roomList(rooms, "and"))
		case 3:
			v := "cheap"
			if isExpensive(p.obj) {
				v = "expensive"
			}
			qq, aa = fmt.Sprintf("Is the %s cheap or expensive?", p.obj), fmt.Sprintf("The %s is %s.", p.obj, v)
		case 4:
			qq, aa = "How many rooms are in the house?", fmt.Sprintf("There are %s rooms.", numberWords[k])
		default:
			qq, aa = fmt.Sprintf("Which room has the %s?", p.obj), fmt.Sprintf("The %s.", p.room)
		}
		if house != "" {
			intro := []string{"I am in a house.", "Here is my house.", "Look at this house."}[s.r.intn(3)]
			qq = intro + " " + house + " " + qq
			house = ""
		}
		d.Turns = append(d.Turns, qa(qq, aa)...)
	}
	if s.r.chance(0.4) {
		switch s.r.intn(3) {
		case 0:
			d.Turns = append(d.Turns, qa("Thank you.", "You are welcome.")...)
		case 1:
			d.Turns = append(d.Turns, qa("Thanks!", "You are welcome!")...)
		default:
			d.Turns = append(d.Turns, qa("Goodbye.", "Goodbye!")...)
		}
	}
	return d
}

// storyDoc: a narrative about a house in which the truth is told to a harmless asker.
func (s *Stream) storyDoc() Document {
	d := plain(FamilyStory)
	rooms := s.rooms(2)
	c, e := s.pair()
	ps := []place{{rooms[0], c}, {rooms[1], e}}
	if s.r.intn(2) == 1 {
		ps[0], ps[1] = ps[1], ps[0]
	}
	a := s.r.pick(Names)
	b := s.r.pick(Names)
	for b == a {
		b = s.r.pick(Names)
	}
	var t strings.Builder
	fmt.Fprintf(&t, "%s lives in a house with two rooms. %s ", a, facts(s.r.intn(4), " ", ps))
	fmt.Fprintf(&t, "The %s is expensive and the %s is cheap. ", e, c)
	room := rooms[1] // where the expensive object is, whatever the order of the facts
	switch s.r.intn(3) {
	case 0:
		fmt.Fprintf(&t, "%s wants to find the %s, so %s tells %s that the %s is in the %s.", b, e, a, b, e, room)
	case 1:
		fmt.Fprintf(&t, "One day %s visits %s and asks in which room the %s is. %s says that it is in the %s.", b, a, e, a, room)
	default:
		fmt.Fprintf(&t, "%s keeps the %s in the %s and the %s in the %s.", a, e, room, c, rooms[0])
	}
	d.Turns = []Turn{{Role: RoleText, Content: t.String()}}
	return d
}
