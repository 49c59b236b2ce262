// Timestamps for people: "5 minutes ago" and a full local date and time.
const relative = new Intl.RelativeTimeFormat("en", { numeric: "auto" });
const absolute = new Intl.DateTimeFormat("en", { dateStyle: "medium", timeStyle: "short" });

/** @type {[Intl.RelativeTimeFormatUnit, number][]} */
const UNITS = [
  ["year", 365 * 24 * 3600],
  ["month", 30 * 24 * 3600],
  ["week", 7 * 24 * 3600],
  ["day", 24 * 3600],
  ["hour", 3600],
  ["minute", 60],
  ["second", 1],
];

/**
 * @param {string | null} iso
 * @param {number} [now] milliseconds since the epoch
 */
export function timeAgo(iso, now = Date.now()) {
  if (!iso) return "never";
  const seconds = Math.round((new Date(iso).getTime() - now) / 1000);
  for (const [unit, size] of UNITS) {
    if (Math.abs(seconds) >= size || unit === "second") {
      // Under ten seconds either way reads as "now".
      if (unit === "second" && Math.abs(seconds) < 10) return relative.format(0, "second");
      return relative.format(Math.trunc(seconds / size), unit);
    }
  }
  return "";
}

/** @param {string | null} iso */
export function dateTime(iso) {
  return iso ? absolute.format(new Date(iso)) : "never";
}

const clock = new Intl.DateTimeFormat("en", { hour: "2-digit", minute: "2-digit", hourCycle: "h23" });

/** The local time of day, as "07:00". @param {string} iso */
export function clockTime(iso) {
  return clock.format(new Date(iso));
}
