/*
 * The Decide panel of a pending approval request's admin page: the arguments checked as they are typed,
 * and the difference from the proposed ones, as on the approval page (/hitl/).
 *
 * JSON syntax, the object shape and a key given twice are checked here at once; everything else (depth,
 * size, NUL characters, the tool's JSON Schema when one is registered) by the server's own check
 * (POST <change page>/check/, the code "Approve with edits" runs), a moment after typing stops. Nothing
 * is saved until a button is pressed, and the server checks every decision again.
 */
(function () {
  "use strict";

  const configElement = document.getElementById("hitl-decide-config");
  const editor = document.getElementById("id_arguments");
  if (!configElement || !editor) return;
  const config = JSON.parse(configElement.textContent);
  const panel = document.getElementById("hitl-decision");
  const errorText = panel.querySelector("[data-testid=args-error]");
  const diffBox = panel.querySelector("[data-testid=args-diff]");
  const editButton = document.querySelector("button[name=_decision][value=edit]");
  const approveButton = document.querySelector("button[name=_decision][value=approve]");
  const csrfInput = document.querySelector("input[name=csrfmiddlewaretoken]");
  const CHECK_DELAY_MS = 300;

  function kindOf(value) {
    if (value === null) return "null";
    if (Array.isArray(value)) return "an array";
    return "a " + typeof value;
  }

  // What JSON.parse lets through silently: a key given twice (the last one would win).
  function duplicateKey(text) {
    const stack = [];
    let i = 0;
    while (i < text.length) {
      const c = text[i];
      if (c === '"') {
        let j = i + 1;
        while (j < text.length && text[j] !== '"') j += text[j] === "\\" ? 2 : 1;
        const top = stack[stack.length - 1];
        if (top && top.object && top.expectKey) {
          const key = JSON.parse(text.slice(i, j + 1));
          if (top.keys.has(key)) return key;
          top.keys.add(key);
          top.expectKey = false;
        }
        i = j + 1;
        continue;
      }
      if (c === "{") stack.push({ object: true, keys: new Set(), expectKey: true });
      else if (c === "[") stack.push({ object: false });
      else if (c === "}" || c === "]") stack.pop();
      else if (c === "," && stack.length && stack[stack.length - 1].object) stack[stack.length - 1].expectKey = true;
      i += 1;
    }
    return null;
  }

  function parseArguments(text) {
    if (!text.trim()) return { error: "Enter the arguments as a JSON object, e.g. {}." };
    let value;
    try {
      value = JSON.parse(text);
    } catch (error) {
      return { error: "This is not valid JSON: " + String(error.message || error) };
    }
    if (value === null || typeof value !== "object" || Array.isArray(value)) {
      return { error: "The arguments must be a JSON object ({…}), not " + kindOf(value) + "." };
    }
    const twice = duplicateKey(text);
    if (twice !== null) return { error: 'The key "' + twice + '" appears twice in one object; only one would be kept.' };
    return { value: value };
  }

  function isObject(value) {
    return value !== null && typeof value === "object" && !Array.isArray(value);
  }

  function canonical(value) {
    if (Array.isArray(value)) return value.map(canonical);
    if (isObject(value)) {
      const sorted = {};
      for (const key of Object.keys(value).sort()) sorted[key] = canonical(value[key]);
      return sorted;
    }
    return value;
  }

  function pretty(value) {
    return JSON.stringify(value, null, 2);
  }

  // A line diff (longest common subsequence) of the two documents, keys sorted so only content differs.
  function lineDiff(a, b) {
    const n = a.length;
    const m = b.length;
    if (n * m > 4000000) return a.map((t) => ["-", t]).concat(b.map((t) => ["+", t]));
    const common = [];
    for (let i = 0; i <= n; i += 1) common.push(new Uint32Array(m + 1));
    for (let i = n - 1; i >= 0; i -= 1) {
      for (let j = m - 1; j >= 0; j -= 1) {
        common[i][j] = a[i] === b[j] ? common[i + 1][j + 1] + 1 : Math.max(common[i + 1][j], common[i][j + 1]);
      }
    }
    const out = [];
    let i = 0;
    let j = 0;
    while (i < n && j < m) {
      if (a[i] === b[j]) {
        out.push([" ", a[i]]);
        i += 1;
        j += 1;
      } else if (common[i + 1][j] >= common[i][j + 1]) {
        out.push(["-", a[i++]]);
      } else {
        out.push(["+", b[j++]]);
      }
    }
    while (i < n) out.push(["-", a[i++]]);
    while (j < m) out.push(["+", b[j++]]);
    return out;
  }

  // The difference as the confirmation page shows it: − proposed, + edited. Whether anything changed.
  function renderDiff(edited) {
    diffBox.replaceChildren();
    const before = pretty(canonical(config.proposed)).split("\n");
    const after = pretty(canonical(edited)).split("\n");
    const lines = lineDiff(before, after);
    const changed = lines.some(([sign]) => sign !== " ");
    diffBox.hidden = !changed;
    if (!changed) return false;
    const heading = document.createElement("p");
    heading.className = "hitl-diff-heading";
    heading.textContent = "Difference from the proposed arguments (− proposed, + edited):";
    const box = document.createElement("div");
    box.className = "hitl-diff";
    for (const [sign, text] of lines) {
      // <del> and <ins> say "removed" and "added" to assistive technology, not only by colour.
      const line = document.createElement(sign === "-" ? "del" : sign === "+" ? "ins" : "div");
      line.className = "hitl-diff-" + (sign === "-" ? "removed" : sign === "+" ? "added" : "same");
      const mark = document.createElement("span");
      mark.setAttribute("aria-hidden", "true");
      mark.textContent = sign === "-" ? "−" : sign;
      line.append(mark, text);
      box.append(line);
    }
    diffBox.append(heading, box);
    return true;
  }

  function show(message) {
    errorText.textContent = message || "";
    editor.setAttribute("aria-invalid", message ? "true" : "false");
  }

  let checkTimer = null;
  let checkSeq = 0;

  async function serverCheck(seq) {
    const body = new URLSearchParams({ arguments: editor.value });
    try {
      const response = await fetch(config.check_url, {
        method: "POST",
        headers: { "X-CSRFToken": csrfInput ? csrfInput.value : "" },
        body: body,
        credentials: "same-origin",
      });
      if (seq !== checkSeq) return; // typed again since: a newer check is coming
      if (!response.ok) return; // the buttons still work; the server checks again there
      const result = await response.json();
      if (seq !== checkSeq) return;
      if (!result.ok) {
        show(result.errors.join(" "));
        editButton.disabled = true;
      }
    } catch (error) {
      // offline or signed out: the decision's own check still runs on submit
    }
  }

  function validate() {
    const result = parseArguments(editor.value);
    checkSeq += 1;
    clearTimeout(checkTimer);
    if (result.error) {
      show(result.error);
      diffBox.hidden = true;
      diffBox.replaceChildren();
      editButton.disabled = true;
      editButton.title = "Fix the arguments first.";
      return;
    }
    show("");
    const changed = renderDiff(result.value);
    editButton.disabled = !changed;
    editButton.title = changed ? "" : "Edit the arguments first (or use Approve to run them as proposed).";
    approveButton.title = changed ? "Approve runs the proposed arguments: use Approve with edits to run yours." : "";
    if (changed) {
      const seq = checkSeq;
      checkTimer = setTimeout(() => serverCheck(seq), CHECK_DELAY_MS);
    }
  }

  editor.setAttribute("spellcheck", "false");
  editor.setAttribute("autocapitalize", "off");
  editor.setAttribute("autocomplete", "off");
  editor.addEventListener("input", validate);
  validate();
})();
