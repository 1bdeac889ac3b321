// Chat page of the answering service: plain script, no build step.
// The API key is held in `apiKey` only (never localStorage, sessionStorage or a cookie): reloading
// the page signs out. All text from the server is inserted with textContent, never as HTML.
"use strict";

(() => {
  let apiKey = null;
  let last = null; // the last complete answer: question, answer, model_version, citations

  const $ = (id) => document.getElementById(id);

  function headers(extra) {
    return { Authorization: `Bearer ${apiKey}`, "Content-Type": "application/json", ...extra };
  }

  async function signIn(event) {
    event.preventDefault();
    $("sign-in-error").textContent = "";
    const candidate = $("api-key").value.trim();
    $("api-key").value = "";
    // A cheap authenticated call checks the key; its groups stay on the server.
    const reply = await fetch("/v1/search", {
      method: "POST",
      headers: { Authorization: `Bearer ${candidate}`, "Content-Type": "application/json" },
      body: JSON.stringify({ query: "sign in", k: 1 }),
    });
    if (reply.status === 401) {
      $("sign-in-error").textContent = "That key was not accepted.";
      return;
    }
    if (!reply.ok) {
      $("sign-in-error").textContent = `The service answered ${reply.status}.`;
      return;
    }
    apiKey = candidate;
    $("who").textContent = "signed in";
    $("sign-in").hidden = true;
    $("chat").hidden = false;
    $("sign-out").hidden = false;
    $("question").focus();
  }

  function signOut() {
    apiKey = null;
    last = null;
    for (const id of ["chat", "result", "source", "sign-out"]) $(id).hidden = true;
    $("sign-in").hidden = false;
    $("who").textContent = "";
  }

  // Reads a server-sent-events body and calls onEvent(name, data) per event.
  async function readEvents(body, onEvent) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        let name = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) name = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
        }
        onEvent(name, data.join("\n"));
      }
    }
  }

  async function ask(event) {
    event.preventDefault();
    const question = $("question").value.trim();
    if (!question) return;
    $("ask").disabled = true;
    $("status").textContent = "retrieving…";
    $("result").hidden = false;
    $("source").hidden = true;
    $("answer").textContent = "";
    $("model").textContent = "";
    $("citations").replaceChildren();
    $("sources").replaceChildren();
    $("no-citations").hidden = true;
    $("feedback-status").textContent = "";
    $("correction-box").hidden = true;
    last = null;
    try {
      const reply = await fetch("/v1/ask", {
        method: "POST",
        headers: headers({ Accept: "text/event-stream" }),
        body: JSON.stringify({ question, stream: true }),
      });
      if (reply.status === 401) {
        signOut();
        $("sign-in-error").textContent = "Your key is no longer accepted; sign in again.";
        return;
      }
      if (!reply.ok) {
        $("status").textContent = `The service answered ${reply.status}: ${(await reply.text()).slice(0, 200)}`;
        return;
      }
      $("status").textContent = "writing…";
      await readEvents(reply.body, (name, data) => {
        if (name === "token") $("answer").textContent += JSON.parse(data).text;
        else if (name === "answer") showAnswer(JSON.parse(data));
        else if (name === "error") $("status").textContent = JSON.parse(data).detail;
      });
      await showPassages(question);
    } catch (err) {
      $("status").textContent = `Request failed: ${err}`;
    } finally {
      $("ask").disabled = false;
    }
  }

  function showAnswer(answer) {
    last = answer;
    $("answer").textContent = answer.answer; // the parsed answer replaces the raw stream
    $("model").textContent = `${answer.model} · ${answer.timings.total_ms.toFixed(0)} ms` +
      (answer.grounded ? "" : " · not supported by any retrieved chunk");
    $("status").textContent = "";
    const list = $("citations");
    for (const c of answer.citations) {
      const button = document.createElement("button");
      button.className = "citation";
      button.dataset.chunkId = c.chunk_id;
      button.dataset.docId = c.doc_id;
      button.textContent = `[${c.label}] ${c.title}${c.section ? ` — ${c.section}` : ""}`;
      button.addEventListener("click", () => showSource(c));
      list.append(button);
    }
    $("no-citations").hidden = answer.citations.length > 0;
  }

  // The passages retrieval found for the question, under the caller's identity (the same search the
  // answer drew on): clickable like citations, useful when the model wrote no citation labels.
  async function showPassages(question) {
    const reply = await fetch("/v1/search", {
      method: "POST",
      headers: headers(),
      body: JSON.stringify({ query: question, k: 3 }),
    });
    if (!reply.ok) return;
    for (const hit of (await reply.json()).hits) {
      const button = document.createElement("button");
      button.dataset.chunkId = hit.chunk_id;
      button.dataset.docId = hit.doc_id;
      button.textContent = `${hit.title}${hit.section ? ` — ${hit.section}` : ""}`;
      button.addEventListener("click", () => showSource({ ...hit, span: hit.text }));
      $("sources").append(button);
    }
  }

  function showSource(c) {
    $("source").hidden = false;
    $("source-title").textContent = c.title;
    $("source-section").textContent = c.section || "";
    $("chunk").textContent = c.span;
    $("source-doc").textContent = c.doc_id;
    $("source-chunk").textContent = c.chunk_id;
    const link = $("source-link");
    // Only web links are clickable; anything else (a file path, javascript:) is shown as text.
    if (/^https?:\/\//i.test(c.source_url)) {
      link.href = c.source_url;
      link.textContent = c.source_url;
    } else {
      link.removeAttribute("href");
      link.textContent = c.source_url || "no source link";
    }
    $("source").scrollIntoView({ behavior: "smooth" });
  }

  async function sendFeedback(rating) {
    if (!last) return;
    const correction = rating === "down" ? $("correction").value.trim() : "";
    const reply = await fetch("/v1/feedback", {
      method: "POST",
      headers: headers(),
      body: JSON.stringify({
        question: last.question,
        answer: last.answer,
        model_version: last.model_version,
        rating,
        correction: correction || null,
        cited_chunk_ids: last.citations.map((c) => c.chunk_id),
      }),
    });
    $("feedback-status").textContent = reply.ok ? "Thank you: feedback stored for review." :
      `Feedback not stored (${reply.status}).`;
    $("correction-box").hidden = true;
  }

  $("sign-in-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", signOut);
  $("ask-form").addEventListener("submit", ask);
  $("thumbs-up").addEventListener("click", () => sendFeedback("up"));
  $("thumbs-down").addEventListener("click", () => {
    $("correction-box").hidden = false;
    $("correction").focus();
  });
  $("send-feedback").addEventListener("click", () => sendFeedback("down"));
})();
