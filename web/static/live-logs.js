// Live log of a deployment page: polls /deployments/<id>/logs?after=N and appends the new
// lines to <pre id="live-log"> until the deployment is finished. The page works without
// this file (the server renders the log so far); CSP forbids inline scripts, hence a file.
(function () {
  "use strict";
  var POLL_MS = 2000;       // between two polls while nothing new arrives
  var RETRY_MS = 10000;     // after a failed poll (hub restarting, network)
  var pre = document.getElementById("live-log");
  if (!pre || pre.dataset.finished === "1") {
    return;
  }
  var url = pre.dataset.logsUrl;
  var after = parseInt(pre.dataset.after || "-1", 10);
  var status = document.getElementById("live-status");
  var stateBadge = document.getElementById("deployment-state");
  var finishedNote = document.getElementById("live-finished");

  function say(text) {
    if (status) {
      status.textContent = text;
    }
  }

  function format(line) {
    var prefix = "[" + (line.step + 1) + (line.stream !== "stdout" ? " " + line.stream : "") + "] ";
    var text = line.text;
    return prefix + text + (text.slice(-1) === "\n" ? "" : "\n");
  }

  function poll() {
    fetch(url + "?after=" + encodeURIComponent(after), {
      credentials: "same-origin",
      headers: { "Accept": "application/json" }
    }).then(function (resp) {
      var type = resp.headers.get("Content-Type") || "";
      if (type.indexOf("application/json") !== 0) {
        say("Live log stopped: the session may have ended. Reload the page.");
        return null;
      }
      return resp.json().then(function (data) {
        if (!resp.ok) {
          say("Live log stopped: " + (data.error || resp.status));
          return null;
        }
        return data;
      });
    }).then(function (data) {
      if (data === null) {
        return;
      }
      var atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      var chunk = "";
      data.lines.forEach(function (line) { chunk += format(line); });
      if (chunk) {
        // A file-drop deployment's page hides the empty panel: show it, drop the note.
        var section = document.getElementById("live-logs");
        var note = document.getElementById("no-live-log");
        if (section && section.hidden) {
          section.hidden = false;
          if (note) {
            note.hidden = true;
          }
        }
        pre.appendChild(document.createTextNode(chunk));
        if (atBottom) {
          pre.scrollTop = pre.scrollHeight;
        }
      }
      after = data.last_seq;
      if (stateBadge && stateBadge.textContent !== data.state) {
        stateBadge.textContent = data.state;
        stateBadge.className = "badge badge-" + data.state;
      }
      if (data.more) {
        poll();
      } else if (data.finished) {
        say("The deployment is " + data.state + ".");
        if (finishedNote) {
          finishedNote.hidden = false;
        }
      } else {
        window.setTimeout(poll, POLL_MS);
      }
    }).catch(function () {
      say("Live log: the hub did not answer; trying again.");
      window.setTimeout(poll, RETRY_MS);
    });
  }

  window.setTimeout(poll, POLL_MS);
}());
