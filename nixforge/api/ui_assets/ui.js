// nixforge's pages: copy buttons, and a running build's log followed live. Text only: never HTML.
"use strict";

function setupCopyButtons() {
  for (const button of document.querySelectorAll("button.copy[data-copy]")) {
    button.hidden = false;
    button.addEventListener("click", async () => {
      const text = button.dataset.copy;
      try {
        await navigator.clipboard.writeText(text);
      } catch (error) {
        const field = document.createElement("textarea");
        field.value = text;
        document.body.append(field);
        field.select();
        document.execCommand("copy");
        field.remove();
      }
      button.textContent = "Copied";
      setTimeout(() => { button.textContent = "Copy"; }, 1500);
    });
  }
}

function show(id, text) {
  const element = document.getElementById(id);
  if (element !== null && text !== null && text !== undefined) {
    element.textContent = text;
  }
}

function when(iso) {
  if (!iso) {
    return "-";
  }
  return iso.replace("T", " ").replace("Z", " UTC");
}

async function showOutcome(log) {
  const answer = await fetch(log.dataset.builds, { cache: "no-store" });
  const builds = (await answer.json()).builds;
  const build = builds.find((entry) => entry.id === log.dataset.build);
  if (build === undefined) {
    return;
  }
  show("build-state", build.state);
  show("build-phase", build.phase);
  show("build-finished", when(build.finished));
  if (build.error) {
    show("build-error", build.error);
    document.getElementById("build-error-section").hidden = false;
  }
}

async function followLog(log) {
  const answer = await fetch(log.dataset.follow, { cache: "no-store" });
  if (!answer.ok || answer.body === null) {
    return;
  }
  const reader = answer.body.getReader();
  const decoder = new TextDecoder();
  let first = true;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) {
      break;
    }
    const text = decoder.decode(value, { stream: true });
    if (first) {
      log.textContent = "";  // the stream starts with the log so far
      first = false;
    }
    log.append(document.createTextNode(text));
    log.scrollTop = log.scrollHeight;
  }
  log.dataset.followed = "done";
  await showOutcome(log);
}

document.addEventListener("DOMContentLoaded", () => {
  setupCopyButtons();
  const log = document.querySelector("pre#log[data-follow]");
  if (log !== null) {
    followLog(log).catch((error) => { log.dataset.followed = "failed: " + error; });
  }
});
