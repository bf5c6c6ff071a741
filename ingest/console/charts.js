// A KPI as a chart (uPlot, vendored) with its numbers in a table beside it:
// the table holds exactly the rows GetApplicationDateRangeKpi answered.
import uPlot from "./vendor/uPlot.esm.js";
import { h, number, table } from "./dom.js";

const COLORS = ["#1f6feb", "#d1242f", "#1a7f37", "#9a6700", "#8250df", "#bf3989"];
const DAY_S = 86400;
const compact = new Intl.NumberFormat("en-US", { notation: "compact", maximumFractionDigits: 1 });

function cells(row) {
  return [...row.GroupedBys.map((g) => g.Value), ...row.Values.map((v) => number(v.Value))];
}

function columns(rows, fallback) {
  if (!rows.length) return fallback;
  return [...rows[0].GroupedBys.map((g) => g.Key), ...rows[0].Values.map((v) => v.Key)];
}

/** Daily series from `rows` over every day of `days` (ISO dates): one series
 * per group (e.g. currency), zero where the API has no row. */
function series(rows, days) {
  const groups = new Map();
  for (const row of rows) {
    const date = row.GroupedBys.find((g) => g.Key === "Date");
    if (!date) continue;
    const group = row.GroupedBys.filter((g) => g.Key !== "Date").map((g) => g.Value).join(" ") || "";
    if (!groups.has(group)) groups.set(group, new Map());
    groups.get(group).set(date.Value, Number(row.Values[0].Value));
  }
  return groups;
}

const charts = new Set();
window.addEventListener("resize", () => {
  for (const chart of charts) {
    if (!chart.root.isConnected) {
      charts.delete(chart);
      continue;
    }
    chart.setSize({ width: chart.root.parentElement.clientWidth, height: 180 });
  }
});

export function kpiSection({ title, name, rows, days, fallbackColumns, note }) {
  const section = h("section", { class: "kpi", dataset: { kpi: name } }, h("h3", {}, title));
  const holder = h("div", { class: "chart", "aria-hidden": "true" });
  section.append(holder);
  const groups = series(rows, days);
  if (note) section.append(h("p", { class: "note" }, note));
  const body = rows.length
    ? table(`${title}: the rows the API answered`, columns(rows, fallbackColumns), rows.map(cells), {
        class: "numbers",
      })
    : h("p", { class: "empty" }, "No data in this range.");
  section.append(body);
  if (groups.size && days.length) {
    requestAnimationFrame(() => {
      const xs = days.map((d) => Date.parse(`${d}T00:00:00Z`) / 1000);
      const data = [xs];
      const config = [{}];
      [...groups.entries()].forEach(([group, values], i) => {
        data.push(days.map((d) => values.get(d) ?? 0));
        config.push({ label: group || title, stroke: COLORS[i % COLORS.length], width: 2 });
      });
      const chart = new uPlot(
        {
          width: Math.max(holder.clientWidth, 240),
          height: 180,
          series: config,
          scales: { x: { time: true } },
          axes: [{ space: 60 }, { size: 50, values: (u, splits) => splits.map((v) => compact.format(v)) }],
          legend: { show: groups.size > 1 },
          tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"),
        },
        data,
        holder,
      );
      charts.add(chart);
    });
  }
  return section;
}

export { DAY_S };
