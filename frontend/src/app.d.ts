// Types for the parts of Google Identity Services' client (and the dev login's stand-in) we use.
declare global {
  interface GoogleCredentialResponse {
    credential: string;
    select_by?: string;
  }

  interface GoogleAccountsId {
    initialize(options: {
      client_id: string;
      callback: (response: GoogleCredentialResponse) => void;
      nonce?: string;
      ux_mode?: "popup" | "redirect";
      auto_select?: boolean;
      use_fedcm_for_prompt?: boolean;
    }): void;
    renderButton(parent: HTMLElement, options: Record<string, string | number>): void;
    prompt(): void;
    cancel(): void;
  }

  interface Window {
    google?: { accounts: { id: GoogleAccountsId } };
  }
}

export {};
