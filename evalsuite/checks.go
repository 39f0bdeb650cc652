package evalsuite

import (
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"context"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
)

//go:embed heldout/texts.txt
var heldoutRaw string

// HeldOutTexts returns the capability check's held-out texts: short paragraphs of plain prose
// written for this project (no benchmark or training data), shipped in the binary.
func HeldOutTexts() []string {
	var out []string
	for _, p := range strings.Split(heldoutRaw, "\n\n") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// Capability methods, in the order they are tried.
const (
	// MethodEcho scores each text as a raw prompt to /v1/completions with echo and logprobs,
	// max_tokens 1: the log-probability of every prompt token after the first, given the tokens
	// before it. This is the standard perplexity of the text.
	MethodEcho = "completions-echo"
	// MethodChatPromptLogprobs sends each text as a user message to /v1/chat/completions with
	// vLLM's "prompt_logprobs" extension and scores every prompt token, so the chat template's
	// tokens are included: comparable between models that share a template, not across
	// templates.
	MethodChatPromptLogprobs = "chat-prompt-logprobs"
	// MethodUnsupported: the endpoint returned neither.
	MethodUnsupported = "unsupported"
)

// CapabilityResult is the held-out log-likelihood of one model.
type CapabilityResult struct {
	// Model is the model name.
	Model string `json:"model"`
	// Method is MethodEcho, MethodChatPromptLogprobs or MethodUnsupported.
	Method string `json:"method"`
	// Texts is the number of texts scored.
	Texts int `json:"texts"`
	// Tokens is the number of scored tokens.
	Tokens int `json:"tokens"`
	// MeanLogLikelihood is the mean natural-log probability per scored token.
	MeanLogLikelihood float64 `json:"mean_log_likelihood"`
	// Perplexity is exp(-MeanLogLikelihood).
	Perplexity float64 `json:"perplexity"`
	// Note explains an unsupported result or a caveat of the method.
	Note string `json:"note,omitempty"`
}

// JudgeResult is the LLM-judged check of one model.
type JudgeResult struct {
	// Model is the judged model.
	Model string `json:"model"`
	// Judge is the judge model's name.
	Judge string `json:"judge"`
	// Questions is the number of questions whose rating could be parsed.
	Questions int `json:"questions"`
	// MeanScore is the mean rating, 1 to 10.
	MeanScore float64 `json:"mean_score"`
	// Scores are the per-question ratings, in JudgeQuestions order (0: unparsed).
	Scores []float64 `json:"scores"`
}

// JudgeQuestions are the questions of the LLM-judged check: short, general, single-turn.
var JudgeQuestions = []string{
	"Explain in three sentences why the sky looks blue during the day.",
	"Write a short, polite email declining an invitation to a meeting.",
	"What is 17 multiplied by 23? Show your working.",
	"Summarize the plot of a story about a lost dog finding its way home, in two sentences.",
	"Give three tips for learning a new language.",
	"Translate 'Good morning, how are you?' into French and Spanish.",
	"A train leaves at 14:10 and arrives at 16:45. How long is the journey?",
	"Write a haiku about autumn leaves.",
}

// errUnsupported marks an endpoint that cannot return what a method needs.
var errUnsupported = errors.New("not supported by the endpoint")

// echoResponse is the part of a completions response the echo method reads; token_logprobs
// entries may be null (the first token), so they are decoded by hand.
type echoResponse struct {
	Choices []struct {
		Logprobs *struct {
			Tokens        []string   `json:"tokens"`
			TokenLogprobs []*float64 `json:"token_logprobs"`
		} `json:"logprobs"`
	} `json:"choices"`
	Usage *struct {
		PromptTokens int `json:"prompt_tokens"`
	} `json:"usage"`
}

// scoreEcho returns the sum of prompt-token log-probabilities and their count.
func (r *requester) scoreEcho(ctx context.Context, model, text string) (float64, int, error) {
	var raw string
	err := r.retry(ctx, func(ctx context.Context) error {
		res, err := r.client.Completions.New(ctx, openai.CompletionNewParams{
			Model:       openai.CompletionNewParamsModel(model),
			Prompt:      openai.CompletionNewParamsPromptUnion{OfString: openai.String(text)},
			Echo:        openai.Bool(true),
			Logprobs:    openai.Int(1),
			MaxTokens:   openai.Int(1),
			Temperature: openai.Float(0),
		})
		if err != nil {
			return err
		}
		raw = res.RawJSON()
		return nil
	})
	if err != nil {
		return 0, 0, err
	}
	var er echoResponse
	if err := json.Unmarshal([]byte(raw), &er); err != nil {
		return 0, 0, fmt.Errorf("decoding completions logprobs: %w", err)
	}
	if len(er.Choices) == 0 || er.Choices[0].Logprobs == nil || len(er.Choices[0].Logprobs.TokenLogprobs) == 0 {
		return 0, 0, fmt.Errorf("completions returned no echoed logprobs: %w", errUnsupported)
	}
	lps := er.Choices[0].Logprobs.TokenLogprobs
	n := len(lps) - 1 // echo + max_tokens 1: the last entry is the generated token
	if er.Usage != nil && er.Usage.PromptTokens > 0 && er.Usage.PromptTokens <= len(lps) {
		n = er.Usage.PromptTokens
	}
	if n < 2 {
		return 0, 0, fmt.Errorf("completions echoed %d prompt tokens: %w", n, errUnsupported)
	}
	return sumLogprobs(lps[:n])
}

func sumLogprobs(lps []*float64) (float64, int, error) {
	var sum float64
	count := 0
	for _, lp := range lps {
		if lp == nil {
			continue
		}
		if math.IsNaN(*lp) || *lp > 1e-6 {
			return 0, 0, fmt.Errorf("invalid log-probability %v", *lp)
		}
		sum += *lp
		count++
	}
	if count == 0 {
		return 0, 0, fmt.Errorf("no scored tokens: %w", errUnsupported)
	}
	return sum, count, nil
}

// scoreChat uses vLLM's prompt_logprobs extension of chat completions.
func (r *requester) scoreChat(ctx context.Context, model, text string) (float64, int, error) {
	var raw string
	err := r.retry(ctx, func(ctx context.Context) error {
		res, err := r.client.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
			Model:       model,
			Messages:    []openai.ChatCompletionMessageParamUnion{openai.UserMessage(text)},
			MaxTokens:   openai.Int(1),
			Temperature: openai.Float(0),
		}, option.WithJSONSet("prompt_logprobs", 0))
		if err != nil {
			return err
		}
		raw = res.RawJSON()
		return nil
	})
	if err != nil {
		return 0, 0, err
	}
	var cr struct {
		PromptLogprobs []map[string]struct {
			Logprob float64 `json:"logprob"`
		} `json:"prompt_logprobs"`
	}
	if err := json.Unmarshal([]byte(raw), &cr); err != nil {
		return 0, 0, fmt.Errorf("decoding chat prompt_logprobs: %w", err)
	}
	var lps []*float64
	for _, m := range cr.PromptLogprobs {
		if len(m) != 1 { // null (first token) or ambiguous
			continue
		}
		for _, v := range m {
			lp := v.Logprob
			lps = append(lps, &lp)
		}
	}
	if len(lps) == 0 {
		return 0, 0, fmt.Errorf("chat returned no prompt_logprobs: %w", errUnsupported)
	}
	return sumLogprobs(lps)
}

// fallbackable: the method is not available at this endpoint (client error or missing data).
func fallbackable(err error) bool {
	if errors.Is(err, errUnsupported) {
		return true
	}
	var apiErr *openai.Error
	if errors.As(err, &apiErr) {
		return apiErr.StatusCode >= 400 && apiErr.StatusCode < 500 && apiErr.StatusCode != http.StatusTooManyRequests
	}
	return false
}

// Capability measures a model's mean log-likelihood per token and perplexity on
// HeldOutTexts: by completions echo+logprobs if the endpoint supports it, else by chat
// prompt_logprobs, else it reports MethodUnsupported with the reason in Note (not an error).
func (r *requester) capability(ctx context.Context, model string) (CapabilityResult, error) {
	texts := HeldOutTexts()
	res := CapabilityResult{Model: model}
	var notes []string
	for _, m := range []struct {
		name  string
		score func(context.Context, string, string) (float64, int, error)
	}{{MethodEcho, r.scoreEcho}, {MethodChatPromptLogprobs, r.scoreChat}} {
		var sum float64
		tokens := 0
		var err error
		for _, t := range texts {
			var s float64
			var n int
			if s, n, err = m.score(ctx, model, t); err != nil {
				break
			}
			sum += s
			tokens += n
		}
		if err == nil {
			res.Method, res.Texts, res.Tokens = m.name, len(texts), tokens
			res.MeanLogLikelihood = sum / float64(tokens)
			res.Perplexity = math.Exp(-res.MeanLogLikelihood)
			if m.name == MethodChatPromptLogprobs {
				res.Note = "includes chat-template tokens"
			}
			return res, nil
		}
		if ctx.Err() != nil || !fallbackable(err) {
			return res, fmt.Errorf("evalsuite: capability check of %q (%s): %w", model, m.name, err)
		}
		notes = append(notes, fmt.Sprintf("%s: %v", m.name, err))
	}
	res.Method = MethodUnsupported
	res.Note = strings.Join(notes, "; ")
	return res, nil
}

var ratingRE = []*regexp.Regexp{
	regexp.MustCompile(`\[\[\s*(\d+(?:\.\d+)?)\s*\]\]`),
	regexp.MustCompile(`(?i)rating\s*[:=]?\s*(\d+(?:\.\d+)?)`),
}

// ParseRating extracts a 1-10 rating from a judge's reply ("[[7]]" as MT-Bench asks for, or
// "Rating: 7"); ok is false when there is none in range.
func ParseRating(reply string) (float64, bool) {
	for _, re := range ratingRE {
		if m := re.FindStringSubmatch(reply); m != nil {
			v, err := strconv.ParseFloat(m[1], 64)
			if err == nil && v >= 1 && v <= 10 {
				return v, true
			}
		}
	}
	return 0, false
}

// JudgePrompt is the single-answer grading prompt (after MT-Bench's), filled with a question
// and an answer.
func JudgePrompt(question, answer string) string {
	return "Please act as an impartial judge and evaluate the quality of the response provided by an AI assistant to the user question displayed below. " +
		"Your evaluation should consider factors such as the helpfulness, relevance, accuracy, depth, and level of detail of the response. " +
		"Begin your evaluation by providing a short explanation. Be as objective as possible. " +
		"After providing your explanation, you must rate the response on a scale of 1 to 10 by strictly following this format: \"[[rating]]\", for example: \"Rating: [[5]]\".\n\n" +
		"[Question]\n" + question + "\n\n[The Start of Assistant's Answer]\n" + answer + "\n[The End of Assistant's Answer]"
}

// judge asks every JudgeQuestion of model (chat, greedy) and has the judge rate the answers.
func (r *requester) judge(ctx context.Context, model string, j *requester, jc *JudgeConfig) (JudgeResult, error) {
	res := JudgeResult{Model: model, Judge: jc.Model, Scores: make([]float64, len(JudgeQuestions))}
	chat := func(rq *requester, m, prompt string, maxTokens int) (string, error) {
		var out string
		err := rq.retry(ctx, func(ctx context.Context) error {
			c, err := rq.client.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
				Model:       m,
				Messages:    []openai.ChatCompletionMessageParamUnion{openai.UserMessage(prompt)},
				Temperature: openai.Float(0),
				MaxTokens:   openai.Int(int64(maxTokens)),
			})
			if err != nil {
				return err
			}
			if len(c.Choices) == 0 {
				return errNoChoices
			}
			out = c.Choices[0].Message.Content
			return nil
		})
		return out, err
	}
	var sum float64
	for i, q := range JudgeQuestions {
		ans, err := chat(r, model, q, 512)
		if err != nil {
			return res, fmt.Errorf("evalsuite: judge check: answering question %d with %q: %w", i, model, err)
		}
		verdict, err := chat(j, jc.Model, JudgePrompt(q, ans), 512)
		if err != nil {
			return res, fmt.Errorf("evalsuite: judge check: rating question %d with judge %q: %w", i, jc.Model, err)
		}
		if v, ok := ParseRating(verdict); ok {
			res.Scores[i] = v
			sum += v
			res.Questions++
		}
	}
	if res.Questions > 0 {
		res.MeanScore = sum / float64(res.Questions)
	}
	return res, nil
}

// checkLine is one line of checks.jsonl.
type checkLine struct {
	Type       string            `json:"type"`
	Capability *CapabilityResult `json:"capability,omitempty"`
	Judge      *JudgeResult      `json:"judge,omitempty"`
}

// runChecks runs the capability and judge checks for every model not already in
// checks.jsonl, and adds the results to rep.
func runChecks(ctx context.Context, cfg *Config, r *requester, rep *Report) error {
	path := filepath.Join(cfg.OutDir, ChecksFile)
	caps := map[string]CapabilityResult{}
	judged := map[string]JudgeResult{}
	if err := readJSONL(path, func(line []byte) error {
		var c checkLine
		if err := json.Unmarshal(line, &c); err != nil {
			return err
		}
		if c.Capability != nil {
			caps[c.Capability.Model] = *c.Capability
		}
		if c.Judge != nil && cfg.Judge != nil && c.Judge.Judge == cfg.Judge.Model {
			judged[c.Judge.Model] = *c.Judge
		}
		return nil
	}); err != nil {
		return err
	}
	out, err := openAppender(path)
	if err != nil {
		return err
	}
	defer out.close()
	var jr *requester
	if cfg.Judge != nil {
		jcl, err := newClient(cfg.Judge.Endpoint, cfg.Judge.APIKey, cfg.HTTPClient)
		if err != nil {
			return fmt.Errorf("evalsuite: judge endpoint: %w", err)
		}
		jr = &requester{client: jcl, cfg: cfg}
	}
	for _, m := range cfg.Models {
		if cfg.Capability {
			c, ok := caps[m.Name]
			if !ok {
				if c, err = r.capability(ctx, m.Name); err != nil {
					return err
				}
				if err := out.write(checkLine{Type: "capability", Capability: &c}); err != nil {
					return err
				}
			}
			rep.Capability = append(rep.Capability, c)
		}
		if jr != nil {
			j, ok := judged[m.Name]
			if !ok {
				if j, err = r.judge(ctx, m.Name, jr, cfg.Judge); err != nil {
					return err
				}
				if err := out.write(checkLine{Type: "judge", Judge: &j}); err != nil {
					return err
				}
			}
			rep.Judge = append(rep.Judge, j)
		}
	}
	return nil
}
