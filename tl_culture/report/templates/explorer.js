// The neuron explorer (tl_culture/report/explorer.py describes the data). No network, no library.
// Contexts are drawn by window.tlxDrawTokens(elementId, props) when the page defines it (the
// circuitsvis adapter, next to the library), else as plain colored spans. The table draws PAGE
// rows at a time; a neuron's panel is drawn when it is opened (a click, or the fragment #L12.345).
(function () {
  "use strict";
  var root = document.getElementById("tlx");
  if (!root) return;
  var D = JSON.parse(document.getElementById("tlx-data").textContent);
  var N = D.neurons, n = N.L.length, S = D.strings, E = D.examples, W = D.writes;
  var PAGE = 200, ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  var COLORS = { language: "#4c78a8", culture: "#f58518" };
  var body = root.querySelector(".tlx-body"), panel = root.querySelector(".tlx-panel");
  var more = root.querySelector(".tlx-more"), count = root.querySelector(".tlx-count");
  var ctl = {
    search: root.querySelector(".tlx-search"), group: root.querySelector(".tlx-group"),
    cat: root.querySelector(".tlx-cat"), layer: root.querySelector(".tlx-layer"),
  };
  var ids = [], index = new Map(), pmax = [];
  for (var i = 0; i < n; i++) {
    ids.push("L" + N.L[i] + "." + N.N[i]);
    index.set(ids[i], i);
    pmax.push(N.p[i].length ? Math.max.apply(null, N.p[i]) : 0);
  }
  var rows = [], shown = 0, sortKey = "id", sortDir = 1, cvCount = 0, pending = [];

  function h(tag, attrs, kids) {
    var e = document.createElement(tag);
    for (var k in attrs || {}) {
      if (k === "text") e.textContent = attrs[k];
      else if (k === "style") e.style.cssText = attrs[k];
      else e.setAttribute(k, attrs[k]);
    }
    (kids || []).forEach(function (c) { if (c != null) e.appendChild(typeof c === "string" ? document.createTextNode(c) : c); });
    return e;
  }
  function fmt(x, d) { return x == null ? "–" : Number(x).toFixed(d); }
  function num(x) {  // three significant digits, no exponent
    var a = Math.abs(x);
    return a >= 100 ? x.toFixed(0) : a >= 10 ? x.toFixed(1) : a >= 1 ? x.toFixed(2) : x.toFixed(3);
  }
  function catText(tags) {
    return tags.map(function (t) { var p = t.split(":"); return p.length > 1 ? p[0] + " (" + p[1] + ")" : t; }).join(", ");
  }

  // ------------------------------------------------------------------ controls
  function options(select, values) {
    values.forEach(function (v) { select.appendChild(h("option", { value: v, text: v })); });
  }
  var memberNames = [];
  N.member.forEach(function (m) { m.forEach(function (g) { if (memberNames.indexOf(g) < 0) memberNames.push(g); }); });
  options(ctl.group, memberNames.sort());
  options(ctl.cat, D.categories);
  options(ctl.layer, Array.from(new Set(N.L)).sort(function (a, b) { return a - b; }).map(String));

  function parseSearch(q) {
    var m = q.trim().match(/^L?(\d+)(?:[.:]N?(\d+))?$/i);
    return m ? { layer: +m[1], neuron: m[2] == null ? null : +m[2] } : null;
  }
  function keep(i) {
    var q = ctl.search.value.trim(), g = ctl.group.value, c = ctl.cat.value, l = ctl.layer.value;
    if (g && N.member[i].indexOf(g) < 0) return false;
    if (c && !N.cat[i].some(function (t) { return t === c || t.indexOf(c + ":") === 0; })) return false;
    if (l && N.L[i] !== +l) return false;
    if (!q) return true;
    var s = parseSearch(q);
    if (s) return N.L[i] === s.layer && (s.neuron == null || N.N[i] === s.neuron);
    q = q.toLowerCase();
    return N.member[i].join(" ").toLowerCase().indexOf(q) >= 0 || N.cat[i].join(" ").toLowerCase().indexOf(q) >= 0;
  }
  function sortValue(i) {
    var g = ctl.group.value, gi = D.groups.indexOf(g);
    switch (sortKey) {
      case "layer": return N.L[i];
      case "groups": return N.member[i].length;
      case "cat": return N.cat[i].join(",");
      case "hl": return N.hl[i] == null ? Infinity : N.hl[i];
      case "hc": return N.hc[i] == null ? Infinity : N.hc[i];
      case "p": return gi >= 0 ? N.p[i][gi] : pmax[i];
      default: return N.L[i] * 1e7 + N.N[i];
    }
  }
  function refresh() {
    rows = [];
    for (var i = 0; i < n; i++) if (keep(i)) rows.push(i);
    var v = rows.map(sortValue);
    var at = new Map(rows.map(function (r, k) { return [r, k]; }));
    rows.sort(function (a, b) {
      var x = v[at.get(a)], y = v[at.get(b)];
      return (x < y ? -1 : x > y ? 1 : a - b) * sortDir;
    });
    body.textContent = "";
    shown = 0;
    drawMore();
  }

  // ------------------------------------------------------------------ table
  function bars(i) {
    var box = h("span", { class: "tlx-bars", title: D.groups.map(function (g, k) { return g + " " + fmt(N.p[i][k], 3); }).join("\n") });
    N.p[i].forEach(function (p, k) {
      box.appendChild(h("i", { style: "height:" + Math.max(1, Math.round(p * 22)) + "px;background:" + COLORS[D.kinds[k]] }));
    });
    return box;
  }
  function row(i) {
    var tr = h("tr", { "data-neuron": ids[i] }, [
      h("td", {}, [h("a", { href: "#" + ids[i], text: ids[i] })]),
      h("td", { text: String(N.L[i]) }),
      h("td", { class: "tlx-left", text: N.member[i].join(" ") }),
      h("td", { class: "tlx-left", text: catText(N.cat[i]) }),
      h("td", { text: fmt(N.hl[i], 3) }),
      h("td", { text: fmt(N.hc[i], 3) }),
      h("td", { class: "tlx-left" }, [bars(i)]),
    ]);
    return tr;
  }
  function drawMore() {
    var frag = document.createDocumentFragment(), end = Math.min(rows.length, shown + PAGE);
    for (var k = shown; k < end; k++) frag.appendChild(row(rows[k]));
    body.appendChild(frag);
    shown = end;
    more.hidden = shown >= rows.length;
    count.textContent = rows.length + " of " + n + " neurons" + (shown < rows.length ? " (" + shown + " shown)" : "");
  }

  // ------------------------------------------------------------------ panel
  function barChart(i) {
    var G = D.groups, rowH = 18, w = 360, lab = 70;
    var svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("width", lab + w + 60);
    svg.setAttribute("height", G.length * rowH + 4);
    svg.setAttribute("class", "tlx-chart");
    G.forEach(function (g, k) {
      var y = k * rowH + 2, p = N.p[i][k];
      svg.insertAdjacentHTML("beforeend",
        '<text x="' + (lab - 6) + '" y="' + (y + 12) + '" text-anchor="end"></text>' +
        '<rect x="' + lab + '" y="' + (y + 2) + '" width="' + Math.max(1, p * w) + '" height="' + (rowH - 5) +
        '" fill="' + COLORS[D.kinds[k]] + '"></rect>' +
        '<text x="' + (lab + p * w + 4) + '" y="' + (y + 12) + '" class="tlx-val"></text>');
      var texts = svg.querySelectorAll("text");
      texts[texts.length - 2].textContent = g;
      texts[texts.length - 1].textContent = fmt(p, 4);
    });
    return svg;
  }
  function tokenList(title, items) {
    if (!items) return null;
    return h("div", { class: "tlx-tokens" }, [h("h4", { text: title }), h("ol", {}, items.map(function (t) {
      return h("li", {}, [h("code", { text: JSON.stringify(S[t[0]]) }), " " + num(t[1])]);
    }))]);
  }
  function contextTokens(g, c, vmax) {
    var span = E.spans[g][String(c[0])], w = E.window, toks = [], vals = [];
    for (var s = 0; s < c[3].length; s++) {
      var ch = c[3][s];
      if (ch === E.outside) continue;
      toks.push(S[span[1][c[1] - w + s - span[0]]].replace(/\n/g, "\u21b5"));  // newlines as ↵: one line a context
      vals.push(s === w ? c[2] : (ALPHABET.indexOf(ch) - E.zero) / E.scale * vmax);
    }
    return { tokens: toks, values: vals };
  }
  function drawContext(box, t, vmax) {
    if (typeof window.tlxDrawTokens === "function") {
      var id = "tlx-cv-" + (cvCount++);
      box.appendChild(h("div", { id: id, class: "tlx-cv" }));
      pending.push(function () {  // circuitsvis finds its element by id: draw once the panel is on the page
        window.tlxDrawTokens(id, { tokens: t.tokens, values: t.values, minValue: -vmax, maxValue: vmax });
      });
      return;
    }
    t.tokens.forEach(function (tok, k) {
      var a = Math.max(-1, Math.min(1, t.values[k] / vmax));
      var bg = a >= 0 ? "rgba(11,92,173," + a.toFixed(2) + ")" : "rgba(200,40,40," + (-a).toFixed(2) + ")";
      box.appendChild(h("span", { class: "tlx-tok", title: fmt(t.values[k], 3), style: "background:" + bg, text: tok }));
    });
  }
  function contexts(i) {
    var out = h("div", { class: "tlx-contexts" }, [h("h4", { text: "Top contexts" })]);
    if (!E || !E.ctx[i]) {
      out.appendChild(h("p", { class: "muted", text: "No top contexts were computed for this neuron (tl-culture run computes them unless --no-examples)." }));
      return out;
    }
    E.groups.forEach(function (g, k) {
      var list = E.ctx[i][k];
      var head = g + " — " + (list.length ? "max " + fmt(list[0][2], 3) : "no tokens") + " · top " + list.length +
        " of " + E.scanned[k] + " tokens";
      var sec = h("div", { class: "tlx-ctx-group" }, [h("h5", { text: head })]);
      list.forEach(function (c) {
        var line = h("div", { class: "tlx-ctx" }, [h("span", { class: "tlx-act", text: fmt(c[2], 3) })]);
        var box = h("div", { class: "tlx-ctx-tokens" });
        line.appendChild(box);
        sec.appendChild(line);
        drawContext(box, contextTokens(k, c, E.vmax[i]), E.vmax[i]);
      });
      out.appendChild(sec);
    });
    return out;
  }
  function open(i) {
    panel.textContent = "";
    panel.hidden = false;
    panel.setAttribute("data-neuron", ids[i]);
    pending = [];
    var close = h("a", { href: "#tlx", class: "tlx-close", text: "close ×" });
    panel.appendChild(h("div", { class: "tlx-head" }, [h("h3", { text: "L" + N.L[i] + ".N" + N.N[i] }), close]));
    panel.appendChild(h("p", { class: "tlx-meta", text: "selected for " + (N.member[i].join(", ") || "–") +
      " · " + (catText(N.cat[i]) || "no category") + " · entropy over languages " + fmt(N.hl[i], 3) +
      ", over cultures " + fmt(N.hc[i], 3) }));
    var cols = h("div", { class: "tlx-cols" }, [h("div", {}, [h("h4", { text: "Activation probability per group" }), barChart(i)])]);
    if (W && W.top[i]) {
      cols.appendChild(tokenList("Promoted tokens (direct effect)", W.top[i]));
      cols.appendChild(tokenList("Suppressed tokens", W.bottom[i]));
    } else {
      cols.appendChild(h("p", { class: "muted", text: "No direct effects were computed for this neuron." }));
    }
    panel.appendChild(cols);
    if (W && W.approximation) panel.appendChild(h("p", { class: "muted tlx-note", text: "Direct effect: " + W.approximation + "." }));
    panel.appendChild(contexts(i));
    pending.forEach(function (draw) { draw(); });
    pending = [];
  }
  function fromHash() {
    var m = location.hash.match(/^#L(\d+)\.N?(\d+)$/);
    if (!m) { if (location.hash === "#tlx") panel.hidden = true; return; }
    var i = index.get("L" + m[1] + "." + m[2]);
    if (i == null) {
      panel.hidden = false;
      panel.textContent = "";
      panel.appendChild(h("p", { text: "L" + m[1] + ".N" + m[2] + " is not among the selected neurons." }));
      return;
    }
    open(i);
    panel.scrollIntoView({ block: "start" });
  }

  // ------------------------------------------------------------------ events
  root.querySelectorAll("th[data-sort]").forEach(function (th) {
    th.addEventListener("click", function () {
      var key = th.getAttribute("data-sort");
      sortDir = key === sortKey ? -sortDir : (key === "p" || key === "groups" ? -1 : 1);
      sortKey = key;
      refresh();
    });
  });
  [ctl.search, ctl.group, ctl.cat, ctl.layer].forEach(function (c) { c.addEventListener("input", refresh); });
  more.addEventListener("click", drawMore);
  if ("IntersectionObserver" in window) {
    new IntersectionObserver(function (es) { if (es[0].isIntersecting && !more.hidden) drawMore(); }).observe(more);
  }
  window.addEventListener("hashchange", fromHash);
  refresh();
  fromHash();
  root.setAttribute("data-ready-ms", performance.now().toFixed(1));
})();
