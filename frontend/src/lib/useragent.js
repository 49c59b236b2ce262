// Which browser and operating system a User-Agent string names, for "Chrome on Windows".
// Order matters: Edge and Opera also say Chrome, Chrome also says Safari, Android also says
// Linux, and iOS also says "like Mac OS X".
/** @type {[string, RegExp][]} */
const BROWSERS = [
  ["Edge", /\bEdg(e|A|iOS)?\//],
  ["Opera", /\bOPR\/|\bOpera\b|\bOPiOS\//],
  ["Firefox", /\bFirefox\/|\bFxiOS\//],
  ["Chrome", /Chrome\/|\bCriOS\/|\bChromium\//],
  ["Safari", /\bVersion\/[\d.]+.*\bSafari\//],
];

/** @type {[string, RegExp][]} */
const SYSTEMS = [
  ["Windows", /\bWindows\b/],
  ["ChromeOS", /\bCrOS\b/],
  ["Android", /\bAndroid\b/],
  ["iOS", /\b(iPhone|iPad|iPod)\b/],
  ["macOS", /\bMacintosh\b|\bMac OS X\b/],
  ["Linux", /\bLinux\b|\bX11\b/],
];

/**
 * @param {string | null | undefined} userAgent
 * @returns {{browser: string, os: string | null}}
 */
export function parseUserAgent(userAgent) {
  const ua = userAgent ?? "";
  const browser = BROWSERS.find(([, pattern]) => pattern.test(ua))?.[0] ?? "Unknown browser";
  const os = SYSTEMS.find(([, pattern]) => pattern.test(ua))?.[0] ?? null;
  return { browser, os };
}

/** "Chrome on Windows", or just the browser when the system is unknown. */
export function describeUserAgent(/** @type {string | null | undefined} */ userAgent) {
  const { browser, os } = parseUserAgent(userAgent);
  return os ? `${browser} on ${os}` : browser;
}
